"""The parts of a TrainingJob spec the runtime reads, parsed with the shared config models.

Importable without torch. Unknown top-level keys (resources, placement, runPolicy, ...) belong to
the control plane and are ignored; `model`, `data` and `training` are validated strictly (their
CEL rules included, as the API server checks them), so a bad field is reported by its path
(`training.batchSize: ...`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

from kaon_kernels.config import DataConfig, ModelConfig, TrainingConfig


class SpecError(ValueError):
    """A spec the runtime cannot run; the message names the field."""


class _Lenient(BaseModel):
    model_config = ConfigDict(
        extra="ignore", alias_generator=to_camel, populate_by_name=True, frozen=True
    )


class CheckpointSettings(_Lenient):
    enabled: bool = True
    interval_steps: int = Field(default=100, ge=1)


class RuntimeSpec(_Lenient):
    """What the runtime needs from `TrainingJob.spec`."""

    model: ModelConfig
    data: DataConfig = Field(default_factory=DataConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    workers: int = Field(default=1, ge=1)
    checkpoint: CheckpointSettings = Field(default_factory=CheckpointSettings)


@dataclass(frozen=True)
class Job:
    """A parsed spec and where this run reads and writes."""

    spec: RuntimeSpec
    name: str
    output_dir: Path
    checkpoint_dir: Path
    termination_log: Path | None
    checkpoint_uri: str | None = None  # s3://bucket/prefix: checkpoints and model go there
    attempt: int = 0  # KAON_ATTEMPT: the fence between attempts in a shared store


def _describe(err: ValidationError) -> str:
    first = err.errors()[0]
    path = ".".join(str(p) for p in first["loc"]) or "spec"
    more = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
    return f"{path}: {first['msg']}{more}"


def parse_spec(raw: Any) -> RuntimeSpec:
    """A spec dict, or a whole TrainingJob manifest (its `spec` is read), as a RuntimeSpec."""
    if isinstance(raw, dict) and "spec" in raw and "model" not in raw:
        raw = raw["spec"]
    if not isinstance(raw, dict):
        raise SpecError("spec: expected a mapping with at least a model")
    try:
        spec = RuntimeSpec.model_validate(raw)
    except ValidationError as err:
        raise SpecError(_describe(err)) from None
    return spec


def manifest_name(raw: Any) -> str | None:
    """metadata.name of a manifest, if `raw` is one."""
    if isinstance(raw, dict) and isinstance(raw.get("metadata"), dict):
        name = raw["metadata"].get("name")
        return name if isinstance(name, str) else None
    return None


def read_spec_text(text: str, where: str) -> Any:
    """JSON or YAML text as data (JSON is YAML, but try the fast parser first)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    import yaml  # noqa: PLC0415 - only the command line reads YAML

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise SpecError(f"{where}: neither JSON nor YAML ({err.__class__.__name__})") from None


def read_spec_file(path: str | Path) -> Any:
    try:
        text = Path(path).read_text()
    except OSError as err:
        raise SpecError(f"--spec {str(path)!r}: {err.strerror or err}") from None
    return read_spec_text(text, f"--spec {str(path)!r}")
