"""TrainingJob: a gang of workers that trains one model, placed on one cluster and pool."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic.config import JsonDict

from kaon.api.common import (
    CPU,
    YEAR_S,
    Condition,
    DNSLabel,
    LabelSelector,
    Memory,
    S3Uri,
    ShortString,
    StoreSecretRef,
    conditions_field,
)
from kaon_kernels.config import DataConfig, ModelConfig, Spec, TrainingConfig, cel, rule

DEFAULT_OBJECT: JsonDict = {"default": {}}


class WorkerResources(Spec):
    """What each pod needs: a TrainingJob's worker, an InferenceService's replica."""

    cpu: CPU = Field(default="1", description="CPU per pod (cores or millicores), 1m to 1024.")
    memory: Memory = Field(default="2Gi", description="Memory per pod, 1Mi to 64Ti.")
    gpus: int = Field(default=0, ge=0, le=64, description="nvidia.com/gpu per pod on GPU pools.")
    gpu_type: DNSLabel | None = Field(
        default=None,
        description="Accelerator type wanted (e.g. nvidia-a100) when no pool preference says.",
    )

    @rule("!has(self.gpuType) || self.gpus > 0", "gpuType requires gpus > 0", ".gpuType")
    def _gpu_type_needs_gpus(self) -> bool:
        return self.gpu_type is None or self.gpus > 0


class PoolPreference(Spec):
    """One entry of an ordered list of pools to try: a kind, narrowed by accelerator or name."""

    type: Literal["gpu", "cpu"] = Field(
        description="gpu: pools with accelerators (workers get resources.gpus each); "
        "cpu: pools without (workers run on CPU, GPUs dropped)."
    )
    accelerator: DNSLabel | None = Field(
        default=None, description="Only GPU pools of this accelerator type."
    )
    pool: DNSLabel | None = Field(default=None, description="Only pools of this name.")

    @rule(
        "self.type == 'gpu' || !has(self.accelerator)",
        "accelerator applies to gpu pools only",
        ".accelerator",
    )
    def _accelerator_for_gpu_pools(self) -> bool:
        return self.type == "gpu" or self.accelerator is None


class Placement(Spec):
    """Where the job may run. The whole gang goes to one cluster and one pool."""

    pool_preferences: list[PoolPreference] = Field(
        default_factory=list,
        max_length=8,
        description=(
            "Pools to try in order, e.g. an a100 pool, else any GPU pool, else CPU. When empty: "
            "GPU pools (of resources.gpuType if set) for a job asking for GPUs, else CPU pools."
        ),
    )
    cluster_selector: LabelSelector | None = Field(
        default=None, description="Only member clusters whose ComputeCluster labels match."
    )
    spot: bool = Field(
        default=False,
        description="May run on spot pools (cheaper; when their nodes vanish the gang restarts "
        "from its last checkpoint, not charged).",
    )


class Checkpointing(Spec):
    """Periodic checkpoints, so a restarted gang resumes instead of starting over; in an S3
    store, so a gang moved to another cluster does too."""

    enabled: bool = Field(default=True, description="Write checkpoints and resume from them.")
    interval_steps: int = Field(
        default=100, ge=1, le=10_000_000, description="Steps between checkpoints."
    )
    claim_name: DNSLabel | None = Field(
        default=None,
        description="PersistentVolumeClaim for checkpoints and artifacts; node-local when absent.",
    )
    location: S3Uri | None = Field(
        default=None,
        description="s3://bucket/prefix for checkpoints and the model, readable from every "
        "member cluster (kaon adds <namespace>/<name>/<uid>): needed to resume after failover.",
    )
    secret_ref: StoreSecretRef | None = Field(
        default=None, description="Credentials of the store at location."
    )

    @rule("!has(self.location) || has(self.secretRef)", "location needs secretRef", ".secretRef")
    def _location_needs_credentials(self) -> bool:
        return self.location is None or self.secret_ref is not None

    @rule(
        "!has(self.location) || !has(self.claimName)",
        "set at most one of location and claimName",
        ".location",
    )
    def _one_store(self) -> bool:
        return self.location is None or self.claim_name is None


class Failover(Spec):
    """What happens to the gang when its member cluster stops answering."""

    mode: Literal["Auto", "Never"] = Field(
        default="Auto",
        description="Auto: after graceSeconds the gang is placed on another member and resumes "
        "from its last committed checkpoint. Never: the job waits for its cluster.",
    )
    grace_seconds: int = Field(
        default=15,
        ge=1,
        le=3600,
        description="How long the cluster may not answer before the gang moves (1 to 3600). "
        "Shorter blips cause no failover.",
    )


class RunPolicy(Spec):
    """Restarts, deadlines, clean-up, suspension, priority and failover."""

    backoff_limit: int = Field(
        default=3,
        ge=0,
        le=100,
        description="Gang restarts after application failures before the job fails. "
        "Infrastructure failures (node lost, evicted, preempted) are not counted.",
    )
    active_deadline_seconds: int | None = Field(
        default=None,
        ge=1,
        le=YEAR_S,
        description="The job fails once it has been admitted this long (at most a year).",
    )
    ttl_seconds_after_finished: int | None = Field(
        default=None,
        ge=0,
        le=YEAR_S,
        description="The job is deleted this long after it finished (at most a year).",
    )
    suspend: bool = Field(
        default=False, description="Suspended jobs have no pods; resuming places them again."
    )
    priority: int = Field(
        default=0,
        ge=-1000,
        le=1000,
        description="Higher is placed first; FIFO among equals. In a queue, a waiting job may "
        "preempt the queue's running jobs of lower priority.",
    )
    min_runtime_seconds: int = Field(
        default=0,
        ge=0,
        le=YEAR_S,
        description="Once admitted, the job is not preempted for this long (at most a year).",
    )
    failover: Failover = Field(
        default_factory=Failover,
        description="Moving the gang when its cluster is lost.",
        json_schema_extra=DEFAULT_OBJECT,
    )


IMMUTABLE_ONCE_ADMITTED = (
    "model",
    "data",
    "training",
    "workers",
    "resources",
    "placement",
    "queue",
)


def _immutable_once_admitted() -> list[JsonDict]:
    return [
        cel(
            "!has(oldSelf.status) || !has(oldSelf.status.placement) || "
            f"(has(self.spec.{f}) == has(oldSelf.spec.{f}) && "
            f"(!has(self.spec.{f}) || self.spec.{f} == oldSelf.spec.{f}))",
            f"spec.{f} cannot change once the job is admitted (suspend it first)",
            f".spec.{f}",
        )
        for f in IMMUTABLE_ONCE_ADMITTED
    ]


class TrainingJobSpec(Spec):
    """What to train, on how many workers, where, and under which run policy."""

    model: ModelConfig = Field(description="The network to train.")
    data: DataConfig = Field(
        default_factory=DataConfig, description="Training data.", json_schema_extra=DEFAULT_OBJECT
    )
    training: TrainingConfig = Field(
        default_factory=TrainingConfig,
        description="Optimisation settings.",
        json_schema_extra=DEFAULT_OBJECT,
    )
    workers: int = Field(default=1, ge=1, le=256, description="Workers in the gang (WORLD_SIZE).")
    resources: WorkerResources = Field(
        default_factory=WorkerResources,
        description="Resources of each worker.",
        json_schema_extra=DEFAULT_OBJECT,
    )
    placement: Placement = Field(
        default_factory=Placement,
        description="Pool preferences and cluster selector.",
        json_schema_extra=DEFAULT_OBJECT,
    )
    checkpoint: Checkpointing = Field(
        default_factory=Checkpointing,
        description="Checkpointing and resume.",
        json_schema_extra=DEFAULT_OBJECT,
    )
    run_policy: RunPolicy = Field(
        default_factory=RunPolicy,
        description="Restarts, deadlines, TTL, suspend, priority, failover.",
        json_schema_extra=DEFAULT_OBJECT,
    )
    queue: DNSLabel | None = Field(
        default=None,
        description="The Queue whose quota admits the job (its namespaceSelector must allow "
        "this namespace); the namespace's kaon.dev/queue label when absent; no quota if neither.",
    )


class JobPlacement(Spec):
    """Where the gang was placed."""

    cluster: ShortString = Field(description="The member cluster (its ComputeCluster name).")
    pool: ShortString = Field(description="The node pool.")
    accelerator: ShortString = Field(default="", description="The pool's accelerator, if any.")
    gpus_per_worker: int = Field(default=0, description="GPUs each worker got there.")
    cost_per_hour: float = Field(
        default=0.0, description="The gang's cost per hour there (pool cost per node-worth)."
    )
    why: ShortString = Field(
        default="", description="Why this pool: the rule that chose it and the best alternative."
    )
    nodes: list[ShortString] = Field(
        default_factory=list,
        max_length=256,
        description=(
            "The node each worker prefers, by rank: kaon's best-fit packing of the gang into "
            "the pool's free capacity. The member's scheduler has the last word."
        ),
    )


class WorkerCounts(Spec):
    """Workers of the current attempt by state."""

    total: int = Field(default=0, description="Workers in the gang.")
    ready: int = Field(default=0, description="Workers running and ready.")
    succeeded: int = Field(default=0, description="Workers that exited 0.")
    failed: int = Field(default=0, description="Workers that failed.")


class Progress(Spec):
    """How far training has got, as the runtime reports it."""

    epoch: int = Field(default=0, description="Current epoch (1-based).")
    step: int = Field(default=0, description="Optimizer steps done.")
    total_steps: int = Field(default=0, description="Steps the whole run takes.")
    percent: int = Field(default=0, ge=0, le=100, description="Share of the steps done.")
    loss: float | None = Field(default=None, description="Latest training loss.")
    eta_seconds: int | None = Field(default=None, description="Estimated seconds left.")
    resumed_from_step: int = Field(
        default=0, description="Step this attempt resumed from its checkpoint (0: from scratch)."
    )


class TrainingJobStatus(Spec):
    """What the job is doing and why."""

    observed_generation: int = Field(default=0, description="The generation last acted on.")
    state: Literal[
        "Pending", "Waiting", "Admitted", "Running", "Succeeded", "Failed", "Suspended"
    ] = Field(default="Pending", description="Summary of the conditions, for kubectl get.")
    conditions: list[Condition] = conditions_field(
        "Admitted, Running, Succeeded, Failed, Suspended, with reasons."
    )
    placement: JobPlacement | None = Field(
        default=None, description="Cluster and pool of the gang, once admitted."
    )
    queue: ShortString | None = Field(
        default=None, description="The Queue the gang was admitted through, if any."
    )
    workers: WorkerCounts = Field(
        default_factory=WorkerCounts, description="Workers of the current attempt."
    )
    attempt: int = Field(
        default=0,
        description="Gang attempt: pod names, KAON_ATTEMPT and checkpoints carry it; only the "
        "current attempt may commit.",
    )
    launched: bool = Field(
        default=False, description="Every worker pod of the current attempt was created."
    )
    restarts: int = Field(default=0, description="Gang restarts charged to backoffLimit.")
    infra_restarts: int = Field(
        default=0, description="Gang restarts after node loss, eviction or preemption (free)."
    )
    failovers: int = Field(
        default=0, description="Moves to another cluster after losing one (not charged)."
    )
    failed_over_from: ShortString | None = Field(
        default=None, description="The lost cluster the gang is moving from, until placed again."
    )
    preemptions: int = Field(
        default=0, description="Times the gang was preempted and put back to wait (not charged)."
    )
    preempted_by: ShortString | None = Field(
        default=None,
        description="The job (namespace/name) that preempted this one, until it is placed again.",
    )
    admitted_at: ShortString | None = Field(
        default=None,
        description="When it was admitted, to the microsecond: newest-admitted victims go first.",
    )
    start_time: ShortString | None = Field(default=None, description="When all workers ran.")
    completion_time: ShortString | None = Field(default=None, description="When it ended.")
    progress: Progress | None = Field(default=None, description="Training progress.")
    metrics: dict[str, float] = Field(
        default_factory=dict, description="Final evaluation metrics (accuracy, f1, ...)."
    )
    artifact: ShortString | None = Field(default=None, description="Where the model was saved.")


def root_rules() -> list[JsonDict]:
    """Rules that need spec and status together, placed at the CRD schema's root."""
    return _immutable_once_admitted()
