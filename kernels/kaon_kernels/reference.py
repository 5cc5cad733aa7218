"""Reference statistics of a model's inputs and predictions, kept beside its artifact.

`reference.json` (written with `model.pt`): for each input feature (a sample flattened, in the raw
values the server receives) the edges of up to `BINS` bins at the training inputs' quantiles and
the share of training samples in each bin; and the share of each class among the model's
predictions on the validation samples. A server compares its recent inputs with it by the
population stability index (PSI) per feature: sum over bins of (live - ref) * ln(live / ref),
shares floored at `FLOOR`. Below 0.1 is usually read as no shift, above 0.25 as a large one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from kaon_kernels.progress import write_json_atomic

REFERENCE_FILE = "reference.json"
FORMAT = "kaon-reference/v1"
BINS = 10
FLOOR = 1e-4  # a share never seen counts as this, so one new value cannot make PSI infinite


@dataclass(frozen=True)
class Reference:
    edges: Tensor  # (features, BINS - 1), float64, each row ascending, padded with +inf
    shares: Tensor  # (features, BINS), float64: training samples per bin, rows sum to 1
    class_shares: tuple[float, ...]  # predictions on the validation samples, per class
    samples: int

    @property
    def features(self) -> int:
        return int(self.edges.shape[0])


def bin_of(edges: Tensor, x: Tensor) -> Tensor:
    """(features, n) bin index of each value of `x` (n, features): values equal to an edge go
    to the bin above it; +inf padding is never passed, so padded bins stay empty."""
    return torch.searchsorted(edges, x.to(edges.dtype).T.contiguous(), right=True)


def histogram(edges: Tensor, bins: Tensor) -> Tensor:
    """(features, BINS) counts of the bin indices of `bin_of`."""
    counts = torch.zeros(edges.shape[0], BINS, dtype=torch.float64)
    return counts.scatter_add_(1, bins.long(), torch.ones_like(bins, dtype=torch.float64))


def psi(reference: Tensor, live: Tensor) -> Tensor:
    """Per-feature population stability index of two (features, BINS) share tables."""
    ref, now = reference.clamp(min=FLOOR), live.clamp(min=FLOOR)
    return ((now - ref) * torch.log(now / ref)).sum(1)


def build(raw_x: Tensor, predicted: Tensor, num_classes: int) -> Reference:
    """The reference of training inputs `raw_x` (n, ...) and validation predictions."""
    x = raw_x.flatten(1).double()
    quantiles = torch.quantile(x, torch.linspace(0, 1, BINS + 1, dtype=torch.float64)[1:-1], 0)
    edges = torch.full((x.shape[1], BINS - 1), float("inf"), dtype=torch.float64)
    for f in range(x.shape[1]):
        unique = torch.unique(quantiles[:, f])  # sorted; a discrete feature has fewer edges
        edges[f, : unique.numel()] = unique
    shares = histogram(edges, bin_of(edges, x)) / max(1, x.shape[0])
    counts = torch.bincount(predicted.long().flatten(), minlength=num_classes).double()
    class_shares = tuple(float(c) for c in counts / max(1.0, float(counts.sum())))
    return Reference(edges, shares, class_shares, int(x.shape[0]))


def save(directory: Path, ref: Reference) -> None:
    def finite(row: Tensor) -> list[float]:
        return [float(v) for v in row if torch.isfinite(v)]

    write_json_atomic(
        directory / REFERENCE_FILE,
        {
            "format": FORMAT,
            "samples": ref.samples,
            "features": [
                {"edges": finite(e), "shares": [round(float(s), 6) for s in sh]}
                for e, sh in zip(ref.edges, ref.shares, strict=True)
            ],
            "classShares": [round(s, 6) for s in ref.class_shares],
        },
    )


def load(directory: Path) -> Reference | None:
    """The artifact's reference, or None for an artifact written before references were."""
    path = directory / REFERENCE_FILE
    if not path.exists():
        return None
    doc: dict[str, Any] = json.loads(path.read_text())
    if doc.get("format") != FORMAT:
        raise ValueError(f"{path}: not a {FORMAT} file")
    features = doc["features"]
    edges = torch.full((len(features), BINS - 1), float("inf"), dtype=torch.float64)
    shares = torch.zeros(len(features), BINS, dtype=torch.float64)
    for f, feature in enumerate(features):
        e = feature["edges"][: BINS - 1]
        edges[f, : len(e)] = torch.tensor(e, dtype=torch.float64)
        shares[f, : len(feature["shares"][:BINS])] = torch.tensor(
            feature["shares"][:BINS], dtype=torch.float64
        )
    classes = tuple(float(s) for s in doc["classShares"])
    return Reference(edges, shares, classes, int(doc["samples"]))
