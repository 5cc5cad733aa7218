"""Checkpoint files: `step-<step>.pt` in the checkpoint directory, written atomically.

A checkpoint is written to a temporary file in the same directory, flushed to disk and renamed
over the final name, so a reader never sees a partial file, even if the writer is killed midway.
The newest few are kept.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Any

import torch

NAME = re.compile(r"^step-(\d+)\.pt$")
KEEP = 2


def checkpoint_path(directory: Path, step: int) -> Path:
    return directory / f"step-{step:09d}.pt"


def list_checkpoints(directory: Path) -> list[tuple[int, Path]]:
    """(step, path) of every finished checkpoint, oldest first."""
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := NAME.match(p.name))]
    return sorted(found)


def save_atomic(obj: object, path: Path) -> None:
    """torch.save to `path` via a temporary file and os.replace."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with tmp.open("wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_checkpoint(directory: Path, step: int, state: dict[str, Any]) -> Path:
    """Save `state` as the checkpoint of `step` and drop all but the newest `KEEP`."""
    path = checkpoint_path(directory, step)
    save_atomic(state, path)
    for _, old in list_checkpoints(directory)[:-KEEP]:
        old.unlink(missing_ok=True)
    return path


def load_latest(directory: Path) -> dict[str, Any] | None:
    """The newest readable checkpoint, or None; unreadable ones are reported and skipped."""
    for _, path in reversed(list_checkpoints(directory)):
        try:
            state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a damaged file must not stop the resume from an older one
            print(f"kaon: skipping unreadable checkpoint {path}: {exc}", file=sys.stderr)
            continue
        return state
    return None
