"""The rig agent's plan for running a pod as a local process (pure; no cluster)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kaon.api.computecluster import PoolSpec
from kaon.api.settings import Settings
from kaon.api.trainingjob import TrainingJobSpec
from kaon.builders.worker import JobRef, worker_identity, worker_pod
from kaon_rig import podproc, podrun, podstatus

POD_DIR = Path("agent") / "pods" / "ns_p"
MACHINE = podrun.Machine(
    pod_dir=POD_DIR,
    python="/venv/bin/python",
    api_host="127.0.0.1",
    api_port="6443",
    base_env={"PATH": "/usr/bin"},
    pod_ip="198.18.7.2",
)


def pod(container: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {
            "name": "p",
            "namespace": "ns",
            "uid": "u-1",
            "labels": {"app": "demo"},
            "annotations": {"note": "hi"},
        },
        "spec": {"nodeName": "west-local-0", "containers": [{"name": "c", **container}], **spec},
    }


def no_objects(kind: str, name: str) -> None:
    return None


def test_env_is_built_like_a_kubelet_builds_it() -> None:
    data = {("configmaps", "cfg"): {"MODE": "fast", "LEVEL": "3"}, ("secrets", "s"): {"pw": "x"}}
    p = pod(
        {
            "command": ["python", "-m", "app", "--mode=$(MODE)", "$$(literal)"],
            "envFrom": [{"configMapRef": {"name": "cfg"}, "prefix": "CFG_"}],
            "env": [
                {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "MODE"}}},
                {"name": "PW", "valueFrom": {"secretKeyRef": {"name": "s", "key": "pw"}}},
                {"name": "ME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
                {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                {"name": "HOST", "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}}},
                {"name": "BIND", "value": "--host=$(IP)"},
                {"name": "GREETING", "value": "$(ME) says $(NOTHING)"},
                {
                    "name": "CPUS",
                    "valueFrom": {"resourceFieldRef": {"resource": "requests.cpu"}},
                },
            ],
            "resources": {"requests": {"cpu": "1500m"}},
        }
    )
    run = podrun.plan(p, MACHINE, {}, lambda kind, name: data.get((kind, name)))
    assert run.argv == ["/venv/bin/python", "-m", "app", "--mode=fast", "$(literal)"]
    env = run.env
    assert env["CFG_MODE"] == "fast" and env["CFG_LEVEL"] == "3" and env["PW"] == "x"
    assert env["ME"] == "p" and env["APP"] == "demo"
    assert env["IP"] == "198.18.7.2" and env["HOST"] == "127.0.0.1"
    assert env["BIND"] == "--host=198.18.7.2"
    assert env["GREETING"] == "p says $(NOTHING)"
    assert env["CPUS"] == "2" and env["OMP_NUM_THREADS"] == "2"
    assert env["KUBERNETES_SERVICE_HOST"] == "127.0.0.1" and env["PATH"] == "/usr/bin"
    assert run.cwd == POD_DIR and run.grace_s == 30.0


def test_paths_inside_mounts_are_remapped_longest_mount_first() -> None:
    p = pod(
        {
            "command": ["tool", "/data/in/x.csv", "/elsewhere"],
            "workingDir": "/data",
            "env": [
                {"name": "OUT", "value": "/data/out"},
                {"name": "LOG", "value": "/dev/termination-log"},
                {"name": "NEAR", "value": "/database"},
            ],
            "volumeMounts": [
                {"name": "d", "mountPath": "/data"},
                {"name": "in", "mountPath": "/data/in"},
            ],
        }
    )
    dirs = {"d": Path("/host/d"), "in": Path("/host/in")}
    run = podrun.plan(p, MACHINE, dirs, no_objects)
    assert run.argv == ["tool", "/host/in/x.csv", "/elsewhere"]
    assert run.env["OUT"] == "/host/d/out" and run.env["NEAR"] == "/database"
    assert run.env["LOG"] == str(POD_DIR / "termination-log") == str(run.termination_log)
    assert run.cwd == Path("/host/d")


def test_a_kaon_worker_finds_its_gang_on_loopback_at_the_agents_port(tmp_path: Path) -> None:
    spec = TrainingJobSpec.model_validate({"model": {"family": "cnn"}, "workers": 2})
    pool = PoolSpec.model_validate({"name": "local", "nodeSelector": {"kaon.dev/pool": "local"}})
    job = JobRef("team", "digits", "uid", {})
    worker = worker_pod(job, spec, pool, 0, attempt=1, rank=1, settings=Settings())
    worker["metadata"]["uid"] = "u-2"
    dirs = {"kaon-state": tmp_path / "state", "tmp": tmp_path / "tmp"}
    run = podrun.plan(worker, MACHINE, dirs, no_objects, master_port=41234)
    env = run.env
    # The gang's rendezvous stays on loopback, whatever IP each worker pod has.
    assert env["MASTER_ADDR"] == "127.0.0.1" and env["MASTER_PORT"] == "41234"
    assert env["KAON_CHECKPOINT_DIR"] == str(tmp_path / "state" / "jobs" / "digits" / "checkpoints")
    assert env["POD_NAME"] == "digits-a1-w1" and env["RANK"] == "1"
    assert run.argv[0] == "/venv/bin/python" and run.fallback_to_logs
    assert podrun.rendezvous_key(worker) == ("team", "digits", "1")


def test_the_worker_identity_may_only_read_and_patch_pods() -> None:
    objects = {plural: obj for _, plural, obj in worker_identity("team")}
    assert objects["roles"]["rules"] == [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "patch"]}
    ]
    assert objects["rolebindings"]["subjects"][0]["name"] == "kaon-worker"


@pytest.mark.parametrize(
    ("container", "spec", "reason"),
    [
        ({"image": "x"}, {}, "UnsupportedPod"),  # no command: images are not run
        ({"command": ["a"]}, {"initContainers": [{"name": "i"}]}, "UnsupportedPod"),
        (
            {"command": ["a"], "volumeMounts": [{"name": "v", "mountPath": "/v"}]},
            {},
            "UnsupportedVolume",
        ),
        (
            {
                "command": ["a"],
                "env": [{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "m", "key": "k"}}}],
            },
            {},
            "CreateContainerConfigError",
        ),
        (
            {
                "command": ["a"],
                "env": [{"name": "X", "valueFrom": {"fieldRef": {"fieldPath": "spec.hostname"}}}],
            },
            {},
            "UnsupportedField",
        ),
    ],
)
def test_what_cannot_run_is_refused_with_a_reason(
    container: dict[str, Any], spec: dict[str, Any], reason: str
) -> None:
    with pytest.raises(podrun.PodRunError) as err:
        podrun.plan(pod(container, **spec), MACHINE, {}, no_objects)
    assert err.value.reason == reason


def test_an_optional_missing_reference_is_left_out() -> None:
    ref = {"configMapKeyRef": {"name": "m", "key": "k", "optional": True}}
    run = podrun.plan(
        pod({"command": ["a"], "env": [{"name": "X", "valueFrom": ref}]}), MACHINE, {}, no_objects
    )
    assert "X" not in run.env


def test_an_exec_probe_command_is_mapped_like_the_containers_own() -> None:
    p = pod(
        {
            "command": ["serve"],
            "env": [{"name": "PORT", "value": "8080"}],
            "volumeMounts": [{"name": "d", "mountPath": "/data"}],
        }
    )
    run = podrun.plan(p, MACHINE, {"d": Path("/host/d")}, no_objects)
    argv = run.local_argv(["python", "/data/check.py", "--port=$(PORT)"])
    assert argv == ["/venv/bin/python", "/host/d/check.py", "--port=8080"]
    assert run.local_argv(["cat", "/etc/hostname"]) == ["cat", "/etc/hostname"]


def test_a_signal_death_reads_as_128_plus_the_signal() -> None:
    assert podstatus.exit_code(-9) == 137 and podstatus.exit_code(-15) == 143
    assert podstatus.exit_code(3) == 3 and podstatus.exit_code(0) == 0


def test_the_termination_message_falls_back_to_the_log_tail_on_failure(tmp_path: Path) -> None:
    machine = podrun.Machine(tmp_path, "python", "127.0.0.1", "6443", {})
    fallback = pod({"command": ["a"], "terminationMessagePolicy": "FallbackToLogsOnError"})
    run = podrun.plan(fallback, machine, {}, no_objects)
    log = tmp_path / "c.log"
    log.write_text("".join(f"line {i}\n" for i in range(200)))
    run.termination_log.write_text("")
    message = podproc.termination_message(run, log, 1)
    assert message.endswith("line 199") and "line 100" not in message
    assert podproc.termination_message(run, log, 0) == ""  # only a failure falls back
    run.termination_log.write_text("said so")
    assert podproc.termination_message(run, log, 1) == "said so"
