"""Training data: the digits set bundled with scikit-learn, or a user's tensor file.

Source `digits`: scikit-learn's handwritten digits (1797 samples, 10 classes) read from the copy
shipped inside the package (`sklearn.datasets.load_digits`, no download), as (N, 8, 8) images.
Each model family's data view (`Family.view`) presents them: a cnn sees each digit as an image of
shape (1, 8, 8); an rnn sees it as a sequence of 8 steps (rows) of 8 features.

Source `file` (the user format): a file written with `torch.save` holding a dict

    {"x": float tensor of shape (N, ...), "y": integer (long) tensor of shape (N,)}

with N >= 2 samples and labels 0..C-1 (C >= 2 classes, C = max label + 1). For a cnn model a
sample is (channels, height, width), or (height, width) which is read as one channel; for an rnn
model a sample is (steps, features). Values must be finite. The file is loaded with
`torch.load(weights_only=True)`, so it may hold only tensors and plain containers, e.g.

    torch.save({"x": images.float(), "y": labels.long()}, "data.pt")

Either way the split into training and validation samples is a seeded permutation
(`validationFraction` of the samples held out), and inputs are normalised with the mean and
standard deviation of the training samples only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from kaon_kernels.config import DataConfig, FamilyName
from kaon_kernels.families.registry import family


@dataclass(frozen=True)
class Split:
    """Normalised training and validation tensors, plus what the model and artifact need."""

    train_x: Tensor
    train_y: Tensor
    val_x: Tensor
    val_y: Tensor
    num_classes: int
    mean: float
    std: float

    @property
    def in_shape(self) -> tuple[int, ...]:
        return tuple(self.train_x.shape[1:])


def load_digits_tensors(name: FamilyName) -> tuple[Tensor, Tensor]:
    """The digits as (x, y) for family `name`: x (1797, 1, 8, 8) for cnn, (1797, 8, 8) for rnn."""
    # Imported here: scikit-learn is slow to import and only the digits source needs it.
    from sklearn.datasets import load_digits  # type: ignore[import-untyped]  # noqa: PLC0415

    bunch = load_digits()
    x = torch.as_tensor(bunch.images, dtype=torch.float32)
    y = torch.as_tensor(bunch.target, dtype=torch.long)
    return family(name).present(x), y


def load_file_tensors(path: str | Path, name: FamilyName) -> tuple[Tensor, Tensor]:
    """A user's `.pt` file as checked (x, y); ValueError naming the problem otherwise."""
    where = f"data.path {str(path)!r}"
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ValueError(f"{where}: no such file") from None
    except Exception as exc:  # torch raises many kinds for unreadable or unsafe files
        raise ValueError(f"{where}: not a torch tensor file ({type(exc).__name__})") from None
    if not isinstance(obj, dict) or not {"x", "y"} <= obj.keys():
        raise ValueError(f'{where}: expected a dict with tensors "x" and "y"')
    x, y = obj["x"], obj["y"]
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise ValueError(f'{where}: "x" must be a floating-point tensor')
    if not isinstance(y, Tensor) or y.dtype.is_floating_point or y.dtype == torch.bool:
        raise ValueError(f'{where}: "y" must be an integer (long) tensor')
    if y.dim() != 1 or x.dim() < 2 or x.shape[0] != y.shape[0]:
        raise ValueError(
            f'{where}: "x" must be (N, ...) and "y" (N,), got {tuple(x.shape)} and {tuple(y.shape)}'
        )
    if x.shape[0] < 2:
        raise ValueError(f"{where}: need at least 2 samples, got {x.shape[0]}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f'{where}: "x" holds NaN or infinite values')
    if int(y.min()) < 0:
        raise ValueError(f'{where}: "y" holds negative labels')
    reader = family(name)
    try:
        x = reader.present(x.float())
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None
    return x, y.long()


def split(x: Tensor, y: Tensor, validation_fraction: float, seed: int) -> Split:
    """A seeded train/validation split, normalised with the training samples' statistics."""
    n = x.shape[0]
    n_val = min(max(round(n * validation_fraction), 1), n - 1)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    val_idx, train_idx = order[:n_val], order[n_val:]
    train_x = x[train_idx]
    mean = float(train_x.mean())
    std = float(train_x.std()) if train_x.numel() > 1 else 1.0
    std = std if std > 1e-8 else 1.0
    num_classes = int(y.max()) + 1
    if num_classes < 2:
        raise ValueError("data: need at least 2 classes (labels 0..C-1)")
    return Split(
        train_x=(train_x - mean) / std,
        train_y=y[train_idx],
        val_x=(x[val_idx] - mean) / std,
        val_y=y[val_idx],
        num_classes=num_classes,
        mean=mean,
        std=std,
    )


def load_data(cfg: DataConfig, name: FamilyName, seed: int) -> Split:
    """The data `cfg` names, as family `name` reads it, split by `seed`."""
    family(name)  # an unknown family is refused before any data is read
    if cfg.source == "file":
        if not cfg.path:
            raise ValueError("data.path: required when source is file")
        x, y = load_file_tensors(cfg.path, name)
    else:
        x, y = load_digits_tensors(name)
    return split(x, y, cfg.validation_fraction, seed)
