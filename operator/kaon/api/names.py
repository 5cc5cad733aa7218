"""kaon's vocabulary on the wire: every label, annotation, finalizer and resource name, once.

Names here are part of kaon's interface: other tools select by them and a restarted operator
finds its objects by them, so they never change lightly.
"""

from __future__ import annotations

MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGER = "kaon"  # the value of MANAGED_BY on everything kaon creates

# Labels kaon sets on the objects it creates in member clusters.
JOB_LABEL = "kaon.dev/job-name"
JOB_UID_LABEL = "kaon.dev/job-uid"
ATTEMPT_LABEL = "kaon.dev/attempt"
RANK_LABEL = "kaon.dev/rank"
ISVC_LABEL = "kaon.dev/inferenceservice"
ISVC_UID_LABEL = "kaon.dev/inferenceservice-uid"
REVISION_LABEL = "kaon.dev/revision"

# Annotations the runtime writes on its own pod, read by the operator.
PROGRESS_ANNOTATION = "kaon.dev/progress"  # by a training worker (rank 0)
LOAD_ANNOTATION = "kaon.dev/load"  # by each model server
REPORT_ANNOTATIONS = (PROGRESS_ANNOTATION, LOAD_ANNOTATION)
MAX_REPORT_BYTES = 1024

# On an InferenceService, by kaon's router: when it last held a request for want of a ready
# replica (RFC 3339, microseconds). A service scaled to zero scales up for a newer one.
WANTED_ANNOTATION = "kaon.dev/wanted-at"
ROUTER_PATH_PREFIX = "/serving"  # the router's path of a service: /serving/NAMESPACE/NAME/v2/...

# On a hub Namespace: the Queue its TrainingJobs are admitted through by default.
QUEUE_LABEL = "kaon.dev/queue"

FINALIZER = "kaon.dev/cleanup"

# The runtime's exit code after SIGTERM once it has saved a checkpoint (kaon_kernels.train):
# preempted, drained or evicted, and resumable, so never charged to backoffLimit.
RESUMABLE_EXIT_CODE = 143

# The hub's heartbeat in each member: a Lease it renews every second (as kubelets renew theirs).
HEARTBEAT_LEASE_NAMESPACE = "kube-node-lease"
HEARTBEAT_LEASE = "kaon-hub"
# The operator's leader election on the hub: one Lease, one acting operator.
LEADER_LEASE = "kaon-operator"

# Extended resources.
GPU_RESOURCE = "nvidia.com/gpu"

ObjectKey = tuple[str, str]  # (namespace, name) of a namespaced kaon object


def key_of(body: dict[str, object]) -> ObjectKey:
    meta = body["metadata"]
    assert isinstance(meta, dict)
    return str(meta["namespace"]), str(meta["name"])
