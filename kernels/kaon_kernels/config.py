"""The runtime's configuration schema: model, data and training settings of a job.

Importable without torch: the operator embeds these models in `TrainingJob.spec`, and the CRD
schema (with its CEL rules) is generated from them, so the API server validates what the runtime
will read.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel
from pydantic.config import JsonDict


def cel(rule: str, message: str, field_path: str | None = None) -> JsonDict:
    """An `x-kubernetes-validations` entry: a CEL rule the API server enforces."""
    entry: JsonDict = {"rule": rule, "message": message}
    if field_path:
        entry["fieldPath"] = field_path
    return entry


class Spec(BaseModel):
    """Base of every spec model: camelCase on the wire, unknown fields refused."""

    model_config = ConfigDict(
        extra="forbid", alias_generator=to_camel, populate_by_name=True, frozen=True
    )


class CNNConfig(Spec):
    """Convolutional network for image-like input: conv blocks, then a small classifier."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "!has(self.kernelSizes) || size(self.kernelSizes) == size(self.channels)",
                    "kernelSizes must give one size per conv block (as many as channels)",
                    ".kernelSizes",
                )
            ]
        }
    )

    channels: list[Annotated[int, Field(ge=1, le=1024)]] = Field(
        default=[32, 64],
        min_length=1,
        max_length=8,
        description="Output channels of each conv block, in order; one block per entry.",
    )
    kernel_sizes: list[Annotated[int, Field(ge=1, le=7)]] | None = Field(
        default=None,
        max_length=8,
        description="Kernel size of each conv block (1-7); 3 for every block when omitted.",
    )
    pooling: Literal["max", "avg", "none"] = Field(
        default="max", description="Pooling after each conv block that halves height and width."
    )
    batch_norm: bool = Field(default=True, description="Batch normalisation in each conv block.")
    dropout: float = Field(
        default=0.1, ge=0.0, le=0.9, description="Dropout before the classifier head."
    )
    hidden_units: int = Field(
        default=128, ge=1, le=8192, description="Width of the classifier's hidden layer."
    )


class RNNConfig(Spec):
    """Recurrent network for sequences: a stack of LSTM, GRU or plain RNN layers."""

    cell: Literal["lstm", "gru", "rnn"] = Field(
        default="lstm", description="Recurrent cell: lstm, gru or rnn (tanh)."
    )
    hidden_size: int = Field(default=128, ge=1, le=4096, description="Hidden state size per layer.")
    layers: int = Field(default=1, ge=1, le=8, description="Number of stacked recurrent layers.")
    bidirectional: bool = Field(default=False, description="Read sequences in both directions.")
    dropout: float = Field(
        default=0.0, ge=0.0, le=0.9, description="Dropout between stacked layers."
    )


# The model families, by name. Each has a settings field of that name in ModelConfig and an
# entry in `kaon_kernels.families.registry` (whose exhaustive match makes mypy ask for it).
FamilyName = Literal["cnn", "rnn"]


class ModelConfig(Spec):
    """The network to train: a family and that family's settings (defaults when omitted)."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "self.family == 'cnn' || !has(self.cnn)",
                    "cnn settings are given but family is not cnn",
                    ".cnn",
                ),
                cel(
                    "self.family == 'rnn' || !has(self.rnn)",
                    "rnn settings are given but family is not rnn",
                    ".rnn",
                ),
            ]
        }
    )

    family: FamilyName = Field(description="Model family: cnn or rnn.")
    cnn: CNNConfig | None = Field(default=None, description="Settings of a cnn model.")
    rnn: RNNConfig | None = Field(default=None, description="Settings of an rnn model.")

    def cnn_or_default(self) -> CNNConfig:
        return self.cnn or CNNConfig()

    def rnn_or_default(self) -> RNNConfig:
        return self.rnn or RNNConfig()


class DataConfig(Spec):
    """Where the training data comes from. Nothing is downloaded at run time."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "!has(self.source) || self.source != 'file' || has(self.path)",
                    "path is required when source is file",
                    ".path",
                ),
                cel(
                    "!has(self.path) || (has(self.source) && self.source == 'file')",
                    "path is only read when source is file",
                    ".path",
                ),
            ]
        }
    )

    source: Literal["digits", "file"] = Field(
        default="digits",
        description=(
            "digits: the handwritten digits set shipped with scikit-learn (8x8 images, or "
            "8-step sequences for rnn models); file: a tensor file at path."
        ),
    )
    path: str | None = Field(
        default=None,
        min_length=1,
        max_length=4096,
        description="Path of the data file inside the container (for source file).",
    )
    validation_fraction: float = Field(
        default=0.2, gt=0.0, lt=1.0, description="Share of the data held out for evaluation."
    )


class TrainingConfig(Spec):
    """Optimisation settings, identical for every worker."""

    epochs: int = Field(default=10, ge=1, le=10000, description="Passes over the training data.")
    batch_size: int = Field(
        default=64, ge=1, le=65536, description="Samples per step on each worker."
    )
    learning_rate: float = Field(default=1e-3, gt=0.0, le=10.0, description="Learning rate.")
    optimizer: Literal["adam", "adamw", "sgd"] = Field(default="adam", description="Optimizer.")
    seed: int = Field(
        default=0, ge=0, le=2**31 - 1, description="Random seed; runs with equal seeds match."
    )
