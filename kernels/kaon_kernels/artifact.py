"""The trained model as an artifact: `model.pt` (weights and how to rebuild) and `model.json`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kaon_kernels.checkpoint import save_atomic
from kaon_kernels.config import ModelConfig
from kaon_kernels.families.registry import family
from kaon_kernels.models import build_model
from kaon_kernels.progress import write_json_atomic

FORMAT = "kaon-model/v1"


def save_artifact(
    directory: Path,
    model: nn.Module,
    cfg: ModelConfig,
    in_shape: Sequence[int],
    num_classes: int,
    mean: float,
    std: float,
    name: str,
) -> None:
    """Write `model.pt` and `model.json` into `directory` (atomically, each)."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    # Spell the family's settings out, so a later change of defaults cannot change the rebuild.
    resolved = family(cfg.family).resolved(cfg)
    save_atomic(
        {
            "format": FORMAT,
            "state_dict": state,
            "model": resolved.model_dump(mode="json", by_alias=True, exclude_none=True),
            "input_shape": list(in_shape),
            "num_classes": num_classes,
            "normalization": {"mean": mean, "std": std},
        },
        directory / "model.pt",
    )
    write_json_atomic(
        directory / "model.json",
        {
            "name": name,
            "family": cfg.family,
            "inputShape": list(in_shape),
            "numClasses": num_classes,
        },
    )


def load_artifact(directory: Path) -> tuple[nn.Module, dict[str, Any]]:
    """The saved model (eval mode, on the CPU) and the artifact's metadata."""
    saved: dict[str, Any] = torch.load(
        directory / "model.pt", map_location="cpu", weights_only=True
    )
    if saved.get("format") != FORMAT:
        raise ValueError(f"{directory / 'model.pt'}: not a {FORMAT} artifact")
    cfg = ModelConfig.model_validate(saved["model"])
    model = build_model(cfg, saved["input_shape"], saved["num_classes"])
    model.load_state_dict(saved["state_dict"])
    model.eval()
    meta = {k: v for k, v in saved.items() if k != "state_dict"}
    return model, meta
