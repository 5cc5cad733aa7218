"""What a model family provides, behind one typed entry: `Family`.

A family module fills one `Family` with its settings type (a `Spec` in `kaon_kernels.config`,
embedded in `ModelConfig` under the family's name), the builder of its network, the shape of one
sample, how a data set's raw tensor is presented to it, and how its settings are written into an
artifact. Everything that differs between families goes through these fields: beyond
`ModelConfig`'s schema (one settings field and one CEL rule per family), nothing in `kaon_kernels`
branches on the family.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from torch import Tensor, nn

from kaon_kernels.config import ModelConfig, Spec

S = TypeVar("S", bound=Spec)


def _as_given(settings: S) -> S:
    return settings


@dataclass(frozen=True)
class Family(Generic[S]):
    """One model family; the registry holds one per name."""

    name: str
    """The family's name: `ModelConfig.family`, and the key of its settings in `ModelConfig`."""
    settings_type: type[S]
    """Its settings; `settings_type()` is the default used when a spec omits them."""
    sample_dims: tuple[str, ...]
    """Names of one sample's dimensions (the input shape without the batch), in order."""
    build: Callable[[S, tuple[int, ...], int], nn.Module]
    """The network for (settings, sample shape, number of classes)."""
    view: Callable[[Tensor], Tensor]
    """Data view: a data set's (N, ...) inputs as (N, *sample_dims); ValueError saying what fits.

    The shipped digits arrive as (N, 8, 8) images; each family decides how it reads them.
    """
    resolve: Callable[[S], S] = _as_given
    """Artifact: the settings with every default spelled out, so a later change of defaults
    cannot change how a saved model is rebuilt."""

    def settings(self, cfg: ModelConfig) -> S:
        """This family's settings in `cfg`, or the defaults when they are omitted."""
        given = getattr(cfg, self.name, None)
        if given is None:
            return self.settings_type()
        if not isinstance(given, self.settings_type):
            raise TypeError(f"model.{self.name}: expected {self.settings_type.__name__}")
        return given

    def build_model(self, cfg: ModelConfig, in_shape: Sequence[int], num_classes: int) -> nn.Module:
        shape = tuple(in_shape)
        if len(shape) != len(self.sample_dims):
            dims = ", ".join(self.sample_dims)
            raise ValueError(f"{self.name} models take ({dims}) samples, got {shape}")
        return self.build(self.settings(cfg), shape, num_classes)

    def present(self, x: Tensor) -> Tensor:
        """`view` applied to a data set's inputs, checked against `sample_dims`."""
        shaped = self.view(x)
        if shaped.dim() != 1 + len(self.sample_dims):
            dims = ", ".join(self.sample_dims)
            raise ValueError(f'{self.name} models need "x" of (N, {dims})')
        return shaped

    def resolved(self, cfg: ModelConfig) -> ModelConfig:
        """`cfg` with this family's settings spelled out, as an artifact stores it."""
        return cfg.model_copy(update={self.name: self.resolve(self.settings(cfg))})
