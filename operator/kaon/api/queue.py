"""Queue: a team's share of the fleet, with nominal quota per resource and a cohort to borrow in.

A namespace reaches its default queue by the label kaon.dev/queue on the Namespace; a job names
another one with spec.queue, which that queue's namespaceSelector must allow. Jobs of no queue
are admitted as before, without quota.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StrictInt
from pydantic.config import JsonDict

from kaon.api.common import (
    Condition,
    DNSLabel,
    LabelSelector,
    QuantityText,
    ShortString,
    conditions_field,
    quantity_between,
)
from kaon.api.resources import parse
from kaon_kernels.config import Spec, rule

DEFAULT_OBJECT: JsonDict = {"default": {}}
# Large enough for any fleet (an exa-unit), small enough to be a bound.
Amount = Annotated[StrictInt | QuantityText, quantity_between("0", "1E", "quota")]
QuotaResource = Literal["cpu", "memory", "gpus", "costPerHour"]
MAX_QUOTAS = 32


def _key(accelerator: str | None, cluster: str | None) -> str:
    return f"{accelerator or ''}/{cluster or ''}"


class Quota(Spec):
    """The nominal amount of one resource the queue is guaranteed, fleet-wide or in one cluster."""

    resource: QuotaResource = Field(
        description="cpu (cores), memory (bytes), gpus (devices) or costPerHour (the pools' "
        "costPerHour units: a budget for what the queue's gangs cost per hour)."
    )
    accelerator: DNSLabel | None = Field(
        default=None,
        description="For gpus: only GPUs of this accelerator type; all GPUs when absent.",
    )
    cluster: DNSLabel | None = Field(
        default=None,
        description="Count only what runs in this member cluster; the whole fleet when absent.",
    )
    nominal: Amount = Field(description="The guaranteed amount (0 to 1E).")
    borrowing_limit: Amount | None = Field(
        default=None,
        description="How much more than nominal the queue may borrow from its cohort's unused "
        "quota; unlimited when absent (needs spec.cohort).",
    )

    @rule(
        "self.resource == 'gpus' || !has(self.accelerator)",
        "accelerator applies to resource gpus only",
        ".accelerator",
    )
    def _accelerator_for_gpus(self) -> bool:
        return self.resource == "gpus" or self.accelerator is None

    @rule(
        "self.resource != 'gpus' || (quantity(string(self.nominal)).isInteger() && "
        "(!has(self.borrowingLimit) || quantity(string(self.borrowingLimit)).isInteger()))",
        "gpus are whole devices",
        ".nominal",
    )
    def _whole_gpus(self) -> bool:
        amounts = [self.nominal, self.borrowing_limit]
        return self.resource != "gpus" or all(
            a is None or parse(a) == parse(a).to_integral_value() for a in amounts
        )

    def key(self) -> str:
        """Unique within a queue: resource, accelerator and cluster."""
        return f"{self.resource}/{_key(self.accelerator, self.cluster)}"


class QueuePreemption(Spec):
    """Whom the queue's waiting jobs may preempt. Victims save a checkpoint, go back to wait
    and resume where they stopped; a job inside its runPolicy.minRuntimeSeconds is spared."""

    reclaim_within_cohort: Literal["Any", "Never"] = Field(
        default="Any",
        description="Any: take back lent nominal quota by preempting jobs of the cohort's "
        "queues that borrow. Never: wait until they finish.",
    )
    within_queue: Literal["LowerPriority", "Never"] = Field(
        default="LowerPriority",
        description="LowerPriority: preempt the queue's own jobs of lower priority.",
    )


class QueueSpec(Spec):
    """Who may submit to the queue, what it is guaranteed, and where it may borrow."""

    cohort: DNSLabel | None = Field(
        default=None,
        description="Queues of one cohort lend each other their unused quota and reclaim it.",
    )
    weight: float = Field(
        default=1.0,
        ge=0.01,
        le=1000.0,
        description="Fair-sharing weight within the cohort (0.01 to 1000).",
    )
    namespace_selector: LabelSelector | None = Field(
        default=None,
        description="Namespaces whose jobs may name this queue in spec.queue; {} allows all. "
        "Namespaces labelled kaon.dev/queue=<this queue> use it by default either way.",
    )
    quotas: list[Quota] = Field(
        default_factory=list,
        max_length=MAX_QUOTAS,
        description="Nominal quota per resource. A resource not listed is not limited.",
    )
    preemption: QueuePreemption = Field(
        default_factory=QueuePreemption,
        description="Preemption by the queue's waiting jobs.",
        json_schema_extra=DEFAULT_OBJECT,
    )

    @rule(
        "has(self.cohort) || self.quotas.all(q, !has(q.borrowingLimit))",
        "borrowingLimit needs a cohort to borrow from",
        ".quotas",
    )
    def _borrowing_needs_cohort(self) -> bool:
        return self.cohort is not None or all(q.borrowing_limit is None for q in self.quotas)

    @rule(
        "self.quotas.all(q, self.quotas.exists_one(p, p.resource == q.resource && "
        "(has(p.accelerator) ? p.accelerator : '') == (has(q.accelerator) ? q.accelerator : '') "
        "&& (has(p.cluster) ? p.cluster : '') == (has(q.cluster) ? q.cluster : '')))",
        "at most one quota per resource, accelerator and cluster",
        ".quotas",
    )
    def _unique_quotas(self) -> bool:
        return len({q.key() for q in self.quotas}) == len(self.quotas)


class QuotaUsage(Spec):
    """One quota and what the queue's admitted workloads use of it."""

    resource: QuotaResource = Field(description="The resource.")
    accelerator: ShortString = Field(default="", description="Its accelerator type, if any.")
    cluster: ShortString = Field(default="", description="Its cluster, if scoped to one.")
    nominal: ShortString = Field(description="The nominal quota.")
    used: ShortString = Field(description="In use by admitted workloads.")
    borrowed: ShortString = Field(default="0", description="Used beyond nominal (from the cohort).")


class QueueStatus(Spec):
    """What the queue's workloads use and how many wait."""

    observed_generation: int = Field(default=0, description="The generation last acted on.")
    conditions: list[Condition] = conditions_field("Active: the queue admits workloads.")
    admitted: int = Field(default=0, description="Workloads admitted and not finished.")
    pending: int = Field(default=0, description="Workloads waiting for admission.")
    usage: list[QuotaUsage] = Field(
        default_factory=list, max_length=MAX_QUOTAS, description="Usage of each quota."
    )
    summary: ShortString = Field(default="", description="Usage of the quotas in one line.")
