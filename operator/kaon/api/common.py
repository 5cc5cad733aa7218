"""Types shared by every kaon resource: conditions, quantities, label selectors, tolerations."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import Field, StrictInt

from kaon.api.resources import parse
from kaon_kernels.config import Rule, Spec, rule

GROUP = "kaon.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

# The API server's own pattern for resource quantities (as in resource.Quantity's OpenAPI).
_NUMBER = r"(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
QUANTITY_PATTERN = rf"^(\+|-)?{_NUMBER}(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?{_NUMBER}))?$"
NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"

# A quantity as a user writes it: 4, "500m", "2Gi". Long enough for any sensible amount, short
# enough that the API server's cost estimate of the CEL rules on it stays small.
QuantityText = Annotated[str, Field(max_length=32, pattern=QUANTITY_PATTERN)]


def quantity_between(least: str, most: str, name: str) -> Rule:
    """The range of a quantity field (an integer or a quantity string), with both ends: the API
    server compares with its quantity library, Python with `kaon.api.resources.parse`."""
    value = "quantity(string(self))"
    return Rule(
        f"!isQuantity(string(self)) || ({value}.compareTo(quantity('{least}')) >= 0 && "
        f"{value}.compareTo(quantity('{most}')) <= 0)",
        f"{name} must be between {least} and {most}",
        lambda amount: parse(least) <= parse(amount) <= parse(most),
    )


# Per pod. Below 1m the API server rounds up anyway; below 1Mi memory is a unit slip (2 for 2Gi).
CPU = Annotated[StrictInt | QuantityText, quantity_between("1m", "1024", "cpu")]
Memory = Annotated[StrictInt | QuantityText, quantity_between("1Mi", "64Ti", "memory")]
DNSLabel = Annotated[str, Field(min_length=1, max_length=63, pattern=NAME_PATTERN)]
ShortString = Annotated[str, Field(max_length=253)]
YEAR_S = 365 * 24 * 3600
# An S3 bucket (3-63 characters) and an optional key prefix.
S3_URI_PATTERN = r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/[^\s]*)?$"
S3Uri = Annotated[str, Field(max_length=1024, pattern=S3_URI_PATTERN)]
MAX_LABELS = 64


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Condition(Spec):
    """A condition in the Kubernetes API conventions' shape."""

    type: ShortString = Field(description="Type of the condition, e.g. Admitted or Running.")
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: ShortString = Field(
        default="", description="Machine-readable CamelCase reason for the last transition."
    )
    message: Annotated[str, Field(max_length=32768)] = Field(
        default="", description="Human-readable details of the last transition."
    )
    last_transition_time: ShortString = Field(
        default="", description="When the status last changed (RFC 3339)."
    )
    observed_generation: int = Field(
        default=0, ge=0, description="The .metadata.generation the condition was computed from."
    )


def conditions_field(description: str) -> Any:
    return Field(
        default_factory=list,
        max_length=16,
        description=description,
        json_schema_extra={
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["type"],
        },
    )


class StoreSecretRef(Spec):
    """A Secret in the object's namespace on the hub with an S3 store's credentials, under the
    keys accessKeyId and secretAccessKey, and optionally endpoint (for S3-compatible servers)
    and region. kaon copies it to each member cluster that runs the object's pods."""

    name: DNSLabel = Field(description="Name of the Secret.")


class LabelSelectorRequirement(Spec):
    """One requirement of a label selector."""

    key: ShortString = Field(description="The label key.")
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"] = Field(
        description="In, NotIn, Exists or DoesNotExist."
    )
    values: list[ShortString] = Field(
        default_factory=list,
        max_length=64,
        description="Values for In and NotIn; empty for Exists and DoesNotExist.",
    )


class LabelSelector(Spec):
    """Labels an object must carry: matchLabels and matchExpressions, all ANDed."""

    match_labels: dict[str, ShortString] = Field(
        default_factory=dict,
        max_length=MAX_LABELS,
        description="Labels that must be present with these values.",
    )
    match_expressions: list[LabelSelectorRequirement] = Field(
        default_factory=list, max_length=16, description="Set-based requirements."
    )

    def matches(self, labels: dict[str, str]) -> bool:
        if any(labels.get(k) != v for k, v in self.match_labels.items()):
            return False
        for req in self.match_expressions:
            present = req.key in labels
            if req.operator == "In" and (not present or labels[req.key] not in req.values):
                return False
            if req.operator == "NotIn" and present and labels[req.key] in req.values:
                return False
            if req.operator == "Exists" and not present:
                return False
            if req.operator == "DoesNotExist" and present:
                return False
        return True


class Toleration(Spec):
    """A toleration the pool's pods carry (core/v1 Toleration)."""

    key: ShortString | None = Field(default=None, description="Taint key; empty matches all.")
    operator: Literal["Equal", "Exists"] | None = Field(
        default=None, description="Equal (default) or Exists."
    )
    value: ShortString | None = Field(default=None, description="Taint value for Equal.")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="Taint effect to tolerate; empty matches all."
    )
    toleration_seconds: int | None = Field(
        default=None,
        ge=0,
        le=YEAR_S,
        description="How long a NoExecute taint is tolerated (at most a year).",
    )

    @rule(
        "!has(self.operator) || self.operator != 'Exists' || !has(self.value)",
        "value must be empty when operator is Exists",
        ".value",
    )
    def _no_value_with_exists(self) -> bool:
        return self.operator != "Exists" or self.value is None

    def to_k8s(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=True)
