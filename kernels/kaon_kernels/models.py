"""Building and preparing the network of a `ModelConfig`, whatever its family.

`build_model(cfg, in_shape, num_classes)` builds the network of `cfg.family` (see
`kaon_kernels.families`); `in_shape` is one sample's shape without the batch dimension, e.g.
(1, 8, 8) for a cnn on digits or (8, 8) (8 steps of 8 features) for an rnn.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from torch import nn

from kaon_kernels.config import ModelConfig
from kaon_kernels.families.registry import family


@runtime_checkable
class Foldable(Protocol):
    """A module that can fold its layers into a faster kernel for inference."""

    def fuse_for_inference(self) -> None: ...


def build_model(cfg: ModelConfig, in_shape: Sequence[int], num_classes: int) -> nn.Module:
    """The network `cfg` describes, for samples of `in_shape` and `num_classes` classes."""
    if num_classes < 2:
        raise ValueError(f"need at least 2 classes, got {num_classes}")
    return family(cfg.family).build_model(cfg, in_shape, num_classes)


def fuse_for_inference(model: nn.Module) -> nn.Module:
    """Fold every foldable block (a cnn's conv + batch norm + ReLU); puts the model in eval mode."""
    model.eval()
    for module in model.modules():
        if isinstance(module, Foldable):
            module.fuse_for_inference()
    return model
