"""InferenceService: replicas of the V2 model server, placed on pools of one or more clusters."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field
from pydantic.config import JsonDict

from kaon.api.common import (
    S3_URI_PATTERN,
    Condition,
    DNSLabel,
    LabelSelector,
    ShortString,
    StoreSecretRef,
    conditions_field,
)
from kaon.api.trainingjob import PoolPreference, WorkerResources
from kaon_kernels.config import Spec, rule

DEFAULT_OBJECT: JsonDict = {"default": {}}
PVC_URI_PATTERN = r"^pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?(/[^/]+)*/?$"
MODEL_URI_PATTERN = f"{PVC_URI_PATTERN}|{S3_URI_PATTERN}"


class TrainingJobRef(Spec):
    """A TrainingJob of the same namespace whose artifact is served."""

    name: DNSLabel = Field(description="Name of the TrainingJob.")


class ModelSource(Spec):
    """Where the model artifact comes from: exactly one of trainingJobRef and uri."""

    training_job_ref: TrainingJobRef | None = Field(
        default=None,
        description="Serve what this TrainingJob saved; it must have succeeded with "
        "spec.checkpoint.claimName or location set (the artifact lives on that claim or in "
        "that store, read with the job's secretRef).",
    )
    uri: Annotated[str, Field(max_length=253, pattern=MODEL_URI_PATTERN)] | None = Field(
        default=None,
        description="pvc://CLAIM/PATH: a kaon model artifact directory on a "
        "PersistentVolumeClaim, mounted read-only by each replica; or s3://BUCKET/PREFIX: "
        "the prefix holding model.pt and model.json (and reference.json, the drift "
        "reference, where training wrote one), which each replica downloads.",
    )
    secret_ref: StoreSecretRef | None = Field(
        default=None, description="Credentials of the store of an s3:// uri."
    )

    @property
    def in_store(self) -> bool:
        return bool(self.uri and self.uri.startswith("s3://"))

    @rule(
        "!has(self.uri) || !self.uri.startsWith('s3://') || has(self.secretRef)",
        "an s3:// uri needs secretRef",
        ".secretRef",
    )
    def _store_needs_credentials(self) -> bool:
        return not self.in_store or self.secret_ref is not None

    @rule(
        "!has(self.secretRef) || (has(self.uri) && self.uri.startsWith('s3://'))",
        "secretRef is for an s3:// uri (a trainingJobRef's model is read with the job's)",
        ".secretRef",
    )
    def _credentials_for_a_store(self) -> bool:
        return self.secret_ref is None or self.in_store

    @rule(
        "has(self.trainingJobRef) != has(self.uri)",
        "set exactly one of trainingJobRef and uri",
        ".uri",
    )
    def _exactly_one_source(self) -> bool:
        return (self.training_job_ref is None) != (self.uri is None)


class Replicas(Spec):
    """How many server replicas run, in all clusters together."""

    min: int = Field(
        default=1,
        ge=0,
        le=256,
        description="Fewest replicas, also when idle. 0: the last replica goes once no request "
        "came for autoscaling.scaleToZeroAfterSeconds; kaon's router holds the next request "
        "until a replica is ready again.",
    )
    max: int = Field(default=1, ge=1, le=256, description="Most replicas under load.")

    @rule("self.min <= self.max", "min must not exceed max", ".min")
    def _min_within_max(self) -> bool:
        return self.min <= self.max


class Autoscaling(Spec):
    """How replicas follow load, read from the servers' own load reports."""

    target_concurrency: float = Field(
        default=8.0,
        gt=0,
        le=10_000,
        description="In-flight requests per replica to aim for: replicas = ceil(total in-flight "
        "/ target), between replicas.min and replicas.max.",
    )
    scale_down_delay_seconds: int = Field(
        default=60,
        ge=0,
        le=86_400,
        description="Replicas are removed only this long after the last scaling.",
    )
    scale_to_zero_after_seconds: int = Field(
        default=300,
        ge=10,
        le=604_800,
        description="With replicas.min 0: the idle period (no request answered or held) after "
        "which the last replica goes.",
    )


class Batching(Spec):
    """Dynamic batching in each server: concurrent requests merged into one forward pass."""

    max_batch_size: int = Field(default=32, ge=1, le=4096, description="Most samples per batch.")
    max_latency_ms: int = Field(
        default=0,
        ge=0,
        le=10_000,
        description="Longest wait for a batch to fill. 0: run at once; requests that queue "
        "while a batch computes form the next batch (best on CPU).",
    )


class Monitoring(Spec):
    """How the model's inputs are watched (the servers measure; kaon sets the Drift condition)."""

    drift_threshold: float = Field(
        default=0.25,
        gt=0,
        le=100,
        description="Drift is raised when a replica's recent inputs (its last 1000 samples, once "
        "it has 200) differ from the training inputs by more than this population stability "
        "index on any input feature. 0.1-0.25 is usually read as a moderate shift, above 0.25 "
        "as a large one.",
    )


class ServingPlacement(Spec):
    """Where replicas may run: ordered pool preferences, spread over clusters."""

    pool_preferences: list[PoolPreference] = Field(
        default_factory=list,
        max_length=8,
        description="Pools to try in order in each cluster (e.g. GPU, else CPU). When empty: "
        "GPU pools when resources.gpus > 0, else CPU pools.",
    )
    cluster_selector: LabelSelector | None = Field(
        default=None, description="Only member clusters whose ComputeCluster labels match."
    )
    spot: bool = Field(
        default=False,
        description="Replicas may run on spot pools (cheaper; lost replicas are replaced).",
    )
    clusters: int = Field(
        default=1,
        ge=1,
        le=16,
        description="Spread the replicas over this many clusters (at least one replica each) "
        "for availability; a cluster that stops answering is replaced.",
    )


class Canary(Spec):
    """A second revision of the model that takes a share of the traffic."""

    model: ModelSource = Field(description="The canary's model.")
    traffic_percent: int = Field(
        ge=0,
        le=100,
        description="Share of requests for the canary, honoured as the share of replicas behind "
        "the one Service; status.canary says the share in effect.",
    )


class RequestLogging(Spec):
    """A sampled share of the infer requests and their answers, written to an S3 store for
    audit."""

    uri: Annotated[str, Field(max_length=253, pattern=S3_URI_PATTERN)] = Field(
        description="s3://BUCKET/PREFIX: each replica writes gzipped JSON Lines objects under "
        "PREFIX/<model>/<revision>/<pod>/<UTC date>/, one line per sampled request (its id, "
        "time, latency, inputs and outputs).",
    )
    secret_ref: StoreSecretRef | None = Field(
        default=None,
        description="Credentials of the store at uri (kaon copies the Secret into each member "
        "that runs a replica).",
    )
    sample_rate: float = Field(
        default=0.01,
        ge=0,
        le=1,
        description="Share of the answered infer requests written, evenly spread (0.01: one in "
        "a hundred; 0: none).",
    )

    @rule("has(self.secretRef)", "requestLogging needs secretRef", ".secretRef")
    def _store_needs_credentials(self) -> bool:
        return self.secret_ref is not None


class ServingTLS(Spec):
    """HTTPS for the replicas' V2 server (and the router's hop to them)."""

    secret_name: DNSLabel = Field(
        description="A kubernetes.io/tls Secret in the service's namespace on the hub, with "
        "tls.crt and tls.key (what cert-manager writes). kaon copies it into each member that "
        "runs a replica and keeps the copy current; a server takes a renewed certificate for "
        "new connections within 10 s, without a restart.",
    )


class ServingAuth(Spec):
    """Bearer tokens (`Authorization: Bearer TOKEN`) on every request but the health checks
    and /metrics: none or an unknown one gets 401, a ServiceAccount token issued for another
    audience 403. Tokens are never logged or written to status or Events."""

    service_account_tokens: bool = Field(
        default=True,
        description="Accept ServiceAccount tokens of the replica's cluster, checked with its "
        "API server's TokenReview for `audience` (kubectl create token SA --audience AUD).",
    )
    audience: Annotated[str, Field(min_length=1, max_length=253, pattern=r"^\S+$")] | None = Field(
        default=None,
        description="The audience ServiceAccount tokens must be issued for; NAME.NAMESPACE "
        "of the service when absent.",
    )
    tokens_secret_name: DNSLabel | None = Field(
        default=None,
        description="A Secret in the service's namespace on the hub whose every value is one "
        "accepted token (kaon copies it into each member that runs a replica and keeps the copy "
        "current).",
    )

    @rule(
        "self.serviceAccountTokens || has(self.tokensSecretName)",
        "auth needs serviceAccountTokens or tokensSecretName",
        ".serviceAccountTokens",
    )
    def _some_tokens(self) -> bool:
        return self.service_account_tokens or self.tokens_secret_name is not None


class InferenceServiceSpec(Spec):
    """What model to serve, how many replicas, where, and how requests are batched."""

    model: ModelSource = Field(description="The model to serve (the stable revision).")
    resources: WorkerResources = Field(
        default_factory=WorkerResources,
        description="Resources of each replica.",
        json_schema_extra=DEFAULT_OBJECT,
    )
    replicas: Replicas = Field(
        default_factory=Replicas,
        description="Replica bounds over all clusters.",
        # Spelled out: the API server checks a default against the CEL rules as it is.
        json_schema_extra={"default": {"min": 1, "max": 1}},
    )
    autoscaling: Autoscaling = Field(
        default_factory=Autoscaling,
        description="Load target and scale-down delay.",
        json_schema_extra=DEFAULT_OBJECT,
    )
    batching: Batching = Field(
        default_factory=Batching,
        description="Dynamic batching of each server.",
        json_schema_extra=DEFAULT_OBJECT,
    )
    placement: ServingPlacement = Field(
        default_factory=ServingPlacement,
        description="Pool preferences, cluster selector and spread.",
        json_schema_extra=DEFAULT_OBJECT,
    )
    canary: Canary | None = Field(
        default=None, description="A second revision with a share of the traffic."
    )
    monitoring: Monitoring = Field(
        default_factory=Monitoring,
        description="Input drift watched against the model's training inputs.",
        json_schema_extra=DEFAULT_OBJECT,
    )
    queue: DNSLabel | None = Field(
        default=None,
        description="The Queue whose quota the replicas count against (its namespaceSelector "
        "must allow this namespace); the namespace's kaon.dev/queue label when absent.",
    )
    tls: ServingTLS | None = Field(
        default=None,
        description="Serve HTTPS with a certificate from a Secret; plain HTTP when absent.",
    )
    auth: ServingAuth | None = Field(
        default=None, description="Require a bearer token on every request; open when absent."
    )
    request_logging: RequestLogging | None = Field(
        default=None,
        description="Write a sample of the infer requests and their answers to an S3 store, for "
        "audit; off when absent.",
    )


class ReplicaEndpoint(Spec):
    """A ready replica, as the router dials it."""

    address: ShortString = Field(description="HOST:PORT of the replica's V2 server.")
    revision: Literal["stable", "canary"] = Field(description="The revision it serves.")


class ClusterServing(Spec):
    """The replicas of the service in one cluster."""

    cluster: ShortString = Field(description="The member cluster (its ComputeCluster name).")
    pool: ShortString = Field(description="The node pool of its replicas.")
    accelerator: ShortString = Field(default="", description="The pool's accelerator, if any.")
    gpus_per_replica: int = Field(default=0, description="GPUs each replica got there.")
    url: ShortString = Field(default="", description="The service's URL inside that cluster.")
    replicas: int = Field(default=0, description="Replicas wanted there (both revisions).")
    ready_replicas: int = Field(default=0, description="Replicas ready there.")
    canary_replicas: int = Field(default=0, description="Of those wanted, canary replicas.")
    endpoints: list[ReplicaEndpoint] = Field(
        default_factory=list,
        max_length=256,
        description="The ready replicas' addresses, which kaon's router sends requests to.",
    )


class CanaryStatus(Spec):
    """The canary's share as requested and as the replica ratio gives it."""

    requested_percent: int = Field(default=0, description="spec.canary.trafficPercent.")
    effective_percent: int = Field(
        default=0, description="Canary replicas over all replicas, in percent."
    )
    replicas: int = Field(default=0, description="Canary replicas over all clusters.")


class ResolvedModel(Spec):
    """The artifact a revision serves: a directory on a claim, or a prefix in an S3 store."""

    claim: ShortString | None = Field(
        default=None, description="The PersistentVolumeClaim holding it (pvc://)."
    )
    path: ShortString = Field(default="", description="The artifact's directory on the claim.")
    uri: ShortString | None = Field(
        default=None, description="s3://BUCKET/PREFIX of its model.pt and model.json."
    )
    secret_ref: StoreSecretRef | None = Field(
        default=None, description="The hub Secret with the credentials of the store at uri."
    )


class InferenceServiceStatus(Spec):
    """Where the service runs, whether it is ready, and why not."""

    observed_generation: int = Field(default=0, description="The generation last acted on.")
    state: Literal[
        "Pending", "Waiting", "Deploying", "Ready", "Degraded", "ScaledToZero", "Failed"
    ] = Field(default="Pending", description="Summary of the conditions, for kubectl get.")
    conditions: list[Condition] = conditions_field(
        "Placed, Ready, ScaledToZero, CanaryShare, Drift, with reasons."
    )
    url: ShortString = Field(
        default="",
        description="The service's V2 endpoint: through kaon's router (one address for every "
        "cluster, held while at zero), else the Service in the first cluster.",
    )
    model: ResolvedModel | None = Field(default=None, description="The stable revision's model.")
    clusters: list[ClusterServing] = Field(
        default_factory=list, max_length=16, description="Replicas per cluster."
    )
    pools: ShortString = Field(
        default="", description="Where replicas run as CLUSTER/POOL,... (for kubectl get)."
    )
    replicas: int = Field(default=0, description="Replicas wanted, over all clusters.")
    ready_replicas: int = Field(default=0, description="Replicas ready, over all clusters.")
    desired_replicas: int = Field(
        default=0, description="What load asks for, between replicas.min and replicas.max."
    )
    last_scale_time: ShortString | None = Field(
        default=None, description="When desiredReplicas last changed."
    )
    canary: CanaryStatus | None = Field(default=None, description="The canary's share.")
    queue: ShortString | None = Field(
        default=None, description="The Queue its replicas count against, if any."
    )
