import json

from kaon.api.computecluster import PoolSpec
from kaon.api.settings import Settings
from kaon.api.trainingjob import TrainingJobSpec
from kaon.builders.worker import JobRef, rendezvous_service, worker_pod

SPEC = TrainingJobSpec.model_validate(
    {"model": {"family": "cnn"}, "workers": 4, "resources": {"cpu": 2, "memory": "4Gi", "gpus": 2}}
)
GPU_POOL = PoolSpec.model_validate(
    {
        "name": "gpu-a100",
        "nodeSelector": {"kaon.dev/pool": "gpu-a100"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "accelerator": {"type": "nvidia-a100", "countPerNode": 8},
    }
)
JOB = JobRef(
    "team-a", "mnist", "uid-1", {"kaon.dev/sim-duration": "2s", "kaon.dev/sim-fail": "0:1:3"}
)
SETTINGS = Settings(runtime_image="example/runtime:1", image_pull_policy="Never")


def env_of(pod: dict) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in pod["spec"]["containers"][0]["env"]}


def test_worker_pod_has_the_torchrun_contract_and_deterministic_name() -> None:
    pod = worker_pod(JOB, SPEC, GPU_POOL, 2, attempt=1, rank=3, settings=SETTINGS)
    assert pod["metadata"]["name"] == "mnist-a1-w3"
    env = env_of(pod)
    assert env["WORLD_SIZE"] == "4" and env["RANK"] == "3" and env["NODE_RANK"] == "3"
    assert env["MASTER_ADDR"] == "worker-0.mnist.team-a.svc"
    assert env["MASTER_PORT"] == "29500" and env["LOCAL_RANK"] == "0" and env["NNODES"] == "4"
    assert json.loads(env["KAON_SPEC"])["model"]["family"] == "cnn"
    assert env["KAON_JOB_NAME"] == "mnist" and env["KAON_ATTEMPT"] == "1"


def test_worker_pod_lands_on_the_pool_with_its_gpus_and_restricted_context() -> None:
    pod = worker_pod(JOB, SPEC, GPU_POOL, 2, attempt=0, rank=0, settings=SETTINGS)
    spec = pod["spec"]
    assert spec["nodeSelector"] == {"kaon.dev/pool": "gpu-a100"}
    assert spec["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]
    c = spec["containers"][0]
    assert c["image"] == "example/runtime:1" and c["imagePullPolicy"] == "Never"
    assert c["resources"]["requests"] == {"cpu": "2", "memory": "4Gi", "nvidia.com/gpu": "2"}
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["restartPolicy"] == "Never"
    assert (spec["hostname"], spec["subdomain"]) == ("worker-0", "mnist")


def test_a_worker_prefers_its_packed_node_by_name_and_requires_nothing_more() -> None:
    pod = worker_pod(JOB, SPEC, GPU_POOL, 2, attempt=0, rank=1, settings=SETTINGS, node="gpu-7")
    affinity = pod["spec"]["affinity"]["nodeAffinity"]
    assert "requiredDuringSchedulingIgnoredDuringExecution" not in affinity
    (term,) = affinity["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["weight"] == 100
    assert term["preference"] == {
        "matchFields": [{"key": "metadata.name", "operator": "In", "values": ["gpu-7"]}]
    }
    unpacked = worker_pod(JOB, SPEC, GPU_POOL, 2, attempt=0, rank=1, settings=SETTINGS)
    assert "affinity" not in unpacked["spec"]


def test_cpu_fallback_drops_the_gpus() -> None:
    cpu_pool = PoolSpec.model_validate({"name": "cpu", "nodeSelector": {"kaon.dev/pool": "cpu"}})
    pod = worker_pod(JOB, SPEC, cpu_pool, 0, attempt=0, rank=0, settings=SETTINGS)
    resources = pod["spec"]["containers"][0]["resources"]
    assert resources["requests"] == {"cpu": "2", "memory": "4Gi"}
    assert "nvidia.com/gpu" not in resources["limits"]
    assert resources["limits"]["memory"] == "4Gi"
    assert pod["spec"]["nodeSelector"] == {"kaon.dev/pool": "cpu"}
    # The GPU pool's taint toleration does not follow the job to a CPU pool.
    assert not pod["spec"].get("tolerations")


def test_every_worker_carries_the_jobs_annotations_unchanged() -> None:
    # The rig's kwok Stage, not the builder, picks the worker that sim-fail names (by its labels).
    for attempt, rank in ((0, 1), (1, 1), (0, 0)):
        pod = worker_pod(JOB, SPEC, GPU_POOL, 2, attempt=attempt, rank=rank, settings=SETTINGS)
        assert pod["metadata"]["annotations"] == JOB.annotations


def test_kubectls_and_the_runtimes_report_annotations_stay_on_the_job() -> None:
    job = JobRef(
        "team-a",
        "mnist",
        "uid-1",
        {
            "kubectl.kubernetes.io/last-applied-configuration": '{"spec": {}}',
            "kaon.dev/progress": '{"step": 999}',
            "kaon.dev/load": '{"inflight": 9}',
            "karpenter.sh/do-not-disrupt": "true",
        },
    )
    pod = worker_pod(job, SPEC, GPU_POOL, 2, attempt=0, rank=0, settings=SETTINGS)
    assert pod["metadata"]["annotations"] == {"karpenter.sh/do-not-disrupt": "true"}


def test_rendezvous_service_is_headless_and_selects_the_job() -> None:
    svc = rendezvous_service(JOB, SETTINGS)
    assert svc["metadata"]["name"] == "mnist"
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["selector"]["kaon.dev/job-name"] == "mnist"
    assert svc["spec"]["selector"]["kaon.dev/rank"] == "0"  # rank 0 is the rendezvous
