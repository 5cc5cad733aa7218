"""The runtime's configuration schema: model, data and training settings of a job.

Importable without torch: the operator embeds these models in `TrainingJob.spec`, and the CRD
schema (with its CEL rules) is generated from them, so the API server validates what the runtime
will read.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    ValidationError,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic.config import JsonDict
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, InitErrorDetails, PydanticCustomError, core_schema


def cel(rule: str, message: str, field_path: str | None = None) -> JsonDict:
    """An `x-kubernetes-validations` entry: a CEL rule the API server enforces."""
    entry: JsonDict = {"rule": rule, "message": message}
    if field_path:
        entry["fieldPath"] = field_path
    return entry


@dataclass(frozen=True)
class Rule:
    """A CEL rule and its Python twin, declared once: the API server runs `rule`, pydantic runs
    `check`, and both refuse with `message` at `field_path`.

    On a model, write it as the `@rule(...)` decorator of the method that checks the same
    (`check` gets the model). On a field, put it in the field's `Annotated[...]` (`check` gets
    the value, and the rule sits on the field's own schema).
    """

    rule: str
    message: str
    check: Callable[[Any], bool]
    field_path: str | None = None

    def entry(self) -> JsonDict:
        return cel(self.rule, self.message, self.field_path)

    def violation(self, model: BaseModel) -> ValidationError:
        """The refusal, located at `field_path` (".kernelSizes") below the model, as the
        API server locates it."""
        loc = tuple(self.field_path.lstrip(".").split(".")) if self.field_path else ()
        error = InitErrorDetails(
            type=PydanticCustomError("cel_rule", self.message, {"rule": self.rule}),
            loc=loc,
            input=model,
        )
        return ValidationError.from_exception_data(type(model).__name__, [error])

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> CoreSchema:
        return core_schema.no_info_after_validator_function(self._check_value, handler(source))

    def __get_pydantic_json_schema__(
        self, schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return with_rules(handler(schema), handler, [self])

    def _check_value(self, value: Any) -> Any:
        if not self.check(value):
            raise PydanticCustomError("cel_rule", self.message, {"rule": self.rule})
        return value


def rule(
    cel_rule: str, message: str, field_path: str | None = None
) -> Callable[[Callable[[Any], bool]], Rule]:
    """Declare a model's CEL rule on the method that checks the same in Python."""

    def declare(check: Callable[[Any], bool]) -> Rule:
        return Rule(cel_rule, message, check, field_path)

    return declare


def with_rules(
    schema: JsonSchemaValue, handler: GetJsonSchemaHandler, rules: list[Rule]
) -> JsonSchemaValue:
    if not rules:
        return schema
    target = handler.resolve_ref_schema(schema)
    target["x-kubernetes-validations"] = [
        *target.get("x-kubernetes-validations", []),
        *(r.entry() for r in rules),
    ]
    return schema


class Spec(BaseModel):
    """Base of every spec model: camelCase on the wire, unknown fields refused, and the CEL
    rules its subclasses declare with `@rule` enforced here too (`cel_rules`)."""

    model_config = ConfigDict(
        extra="forbid",
        alias_generator=to_camel,
        populate_by_name=True,
        frozen=True,
        ignored_types=(Rule,),
    )

    cel_rules: ClassVar[tuple[Rule, ...]] = ()

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        declared = (v for k in reversed(cls.__mro__) for v in vars(k).values())
        cls.cel_rules = tuple(dict.fromkeys(v for v in declared if isinstance(v, Rule)))

    @classmethod
    def __get_pydantic_json_schema__(
        cls, schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return with_rules(handler(schema), handler, list(cls.cel_rules))

    @model_validator(mode="after")
    def _hold_to_cel_rules(self) -> Self:
        for declared in self.cel_rules:
            if not declared.check(self):
                raise declared.violation(self)
        return self


class CNNConfig(Spec):
    """Convolutional network for image-like input: conv blocks, then a small classifier."""

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

    @rule(
        "!has(self.kernelSizes) || size(self.kernelSizes) == size(self.channels)",
        "kernelSizes must give one size per conv block (as many as channels)",
        ".kernelSizes",
    )
    def _one_kernel_size_per_block(self) -> bool:
        return self.kernel_sizes is None or len(self.kernel_sizes) == len(self.channels)


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

    family: FamilyName = Field(description="Model family: cnn or rnn.")
    cnn: CNNConfig | None = Field(default=None, description="Settings of a cnn model.")
    rnn: RNNConfig | None = Field(default=None, description="Settings of an rnn model.")

    @rule(
        "self.family == 'cnn' || !has(self.cnn)",
        "cnn settings are given but family is not cnn",
        ".cnn",
    )
    def _cnn_settings_for_cnn(self) -> bool:
        return self.family == "cnn" or self.cnn is None

    @rule(
        "self.family == 'rnn' || !has(self.rnn)",
        "rnn settings are given but family is not rnn",
        ".rnn",
    )
    def _rnn_settings_for_rnn(self) -> bool:
        return self.family == "rnn" or self.rnn is None

    def cnn_or_default(self) -> CNNConfig:
        return self.cnn or CNNConfig()

    def rnn_or_default(self) -> RNNConfig:
        return self.rnn or RNNConfig()


class DataConfig(Spec):
    """Where the training data comes from. Nothing is downloaded at run time."""

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

    @rule(
        "!has(self.source) || self.source != 'file' || has(self.path)",
        "path is required when source is file",
        ".path",
    )
    def _file_needs_path(self) -> bool:
        return self.source != "file" or self.path is not None

    @rule(
        "!has(self.path) || (has(self.source) && self.source == 'file')",
        "path is only read when source is file",
        ".path",
    )
    def _path_only_for_file(self) -> bool:
        return self.path is None or self.source == "file"


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
