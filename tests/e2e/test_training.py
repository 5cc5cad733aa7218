"""TrainingJobs that really train: applied with kubectl, run by the rig's process agent.

The agent serves node west-local-0 (pool `local`): every worker pod placed there is a real
`python -m kaon_kernels.train` process of this machine, DDP over gloo for several workers.
"""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import yaml

from kaon_rig import paths

from kaonrig import (
    REPO,
    Jobs,
    Rig,
    bound_claim,
    kubectl,
    state,
    wait_for,
)

EXAMPLES = REPO / "examples"
AGENT_NODE = "west-local-0"
TRAIN_TIMEOUT_S = 420.0


def pod_dir(ns: str, pod: str) -> Path:
    (found,) = (paths.agent_dir(AGENT_NODE) / "pods").glob(f"{ns}_{pod}_*")
    return found


def runtime_log(ns: str, pod: str) -> str:
    return (pod_dir(ns, pod) / "runtime.log").read_text()


def progress_column(kaon_rig: Rig, ns: str, name: str) -> str:
    """PROGRESS as `kubectl get tj` prints it (empty until the runtime reports)."""
    header, row = kubectl(kaon_rig, "get", "tj", name, "-n", ns).splitlines()
    start = header.index("PROGRESS")
    end = header.index("AGE")
    return row[start:end].strip()


def test_cnn_and_lstm_train_for_real_with_progress_in_kubectl(
    kaon_rig: Rig, jobs: Jobs, namespace: str, local_pool: str
) -> None:
    for example in ("cnn-digits", "lstm-digits"):
        kubectl(
            kaon_rig,
            "apply",
            "-n",
            namespace,
            "-f",
            str(EXAMPLES / "trainingjobs" / f"{example}.yaml"),
        )
    seen: dict[str, set[str]] = {"cnn-digits": set(), "lstm-digits": set()}

    def both_done() -> bool:
        for name, values in seen.items():
            values.add(progress_column(kaon_rig, namespace, name))
        return all(state(jobs.get(namespace, n)) in ("Succeeded", "Failed") for n in seen)

    wait_for(both_done, bool, "both jobs finished", TRAIN_TIMEOUT_S, interval_s=1.0)

    cnn, lstm = jobs.get(namespace, "cnn-digits"), jobs.get(namespace, "lstm-digits")
    assert state(cnn) == "Succeeded" and state(lstm) == "Succeeded"
    assert cnn["status"]["placement"]["cluster"] == local_pool
    assert cnn["status"]["metrics"]["accuracy"] >= 0.95
    assert lstm["status"]["metrics"]["accuracy"] >= 0.90
    for job in (cnn, lstm):
        progress = job["status"]["progress"]
        assert progress["percent"] == 100 and progress["step"] == progress["totalSteps"] > 0
        assert set(job["status"]["metrics"]) >= {"accuracy", "precision", "recall", "f1"}
        assert (Path(job["status"]["artifact"]) / "model.pt").is_file()
    # Progress moved while the jobs ran: kubectl showed it between 0 and 100.
    moving = {v for values in seen.values() for v in values if v.isdigit() and 0 < int(v) < 100}
    assert moving, seen

    # DDP across two processes: both ranks ended with the same parameters.
    digests = [
        line.rsplit(" ", 1)[-1]
        for rank in (0, 1)
        for line in runtime_log(namespace, f"cnn-digits-a0-w{rank}").splitlines()
        if "final parameters sha256" in line
    ]
    assert len(digests) == 2 and digests[0] == digests[1]
    assert "2 worker(s) on cpu" in runtime_log(namespace, "cnn-digits-a0-w0")


def test_killed_worker_restarts_the_gang_which_resumes_from_its_checkpoint(
    kaon_rig: Rig, jobs: Jobs, namespace: str, local_pool: str, tmp_path: Path
) -> None:
    claim = bound_claim(kaon_rig, "west", namespace, "checkpoints", tmp_path)
    manifest = yaml.safe_load((EXAMPLES / "trainingjobs" / "cnn-digits.yaml").read_text())
    manifest["metadata"]["name"] = "resumable"
    manifest["spec"]["training"]["epochs"] = 40
    manifest["spec"]["checkpoint"] = {"enabled": True, "intervalSteps": 20, "claimName": claim}
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(manifest))
    kubectl(kaon_rig, "apply", "-n", namespace, "-f", str(tmp_path / "job.yaml"))

    job = jobs.wait(
        namespace,
        "resumable",
        lambda j: ((j.get("status") or {}).get("progress") or {}).get("step", 0) >= 60,
        "three checkpoints' worth of steps",
        TRAIN_TIMEOUT_S,
    )
    checkpoints = tmp_path / "jobs" / "resumable" / "checkpoints"  # one directory per job
    pid = int((pod_dir(namespace, "resumable-a0-w1") / "pid").read_text())
    saved = sorted(checkpoints.glob("step-*.pt"))
    assert saved, "no checkpoint on the claim"
    newest_at_kill = int(saved[-1].stem.removeprefix("step-"))
    os.kill(pid, signal.SIGKILL)

    job = jobs.wait_state(namespace, "resumable", "Succeeded", "Failed", timeout_s=TRAIN_TIMEOUT_S)
    assert state(job) == "Succeeded", job["status"]
    status = job["status"]
    assert status["attempt"] == 1 and status["restarts"] == 1
    # It went on from the newest checkpoint (rank 0 may have saved one more at the next
    # interval before the gang was torn down), it did not start over, and status says the
    # step the runtime itself resumed from (older checkpoints are rotated away).
    resumed = status["progress"]["resumedFromStep"]
    assert resumed in (newest_at_kill, newest_at_kill + 20), (resumed, newest_at_kill)
    logged = re.search(r"resuming at step (\d+) of", runtime_log(namespace, "resumable-a1-w0"))
    assert logged is not None and int(logged.group(1)) == resumed
    assert status["progress"]["step"] == status["progress"]["totalSteps"]
    assert status["metrics"]["accuracy"] >= 0.95
    # The resumed attempt went on writing to the same claim, up to the last step.
    last = sorted(checkpoints.glob("step-*.pt"))[-1]
    assert last.name == f"step-{status['progress']['totalSteps']:09d}.pt"
    # The artifact is named where a server can mount it, and it is there.
    assert status["artifact"] == f"pvc://{claim}/jobs/resumable/output"
    assert (tmp_path / "jobs" / "resumable" / "output" / "model.pt").is_file()
