"""A CNN that really trains, with its checkpoints in the rig's S3 server, survives the loss of
its member: lost with its machine (`kaon rig stop`), the gang moves to the other member's
process-agent pool, resumes from the last committed checkpoint and ends with the same accuracy
bar as an uninterrupted run."""

from __future__ import annotations

from kaon_rig import paths

from kaonrig import MEMBER_OF, REPO, Jobs, Rig, kaon_rig_cli, kubectl, wait_event, wait_for
from storekit import manifest, manifest_step, store_secret

EXAMPLES = REPO / "examples"
TRAIN_TIMEOUT_S = 480.0


def test_a_real_cnn_moves_to_the_other_members_processes_and_resumes(
    kaon_rig: Rig, jobs: Jobs, namespace: str, local_pools: list[str]
) -> None:
    secret = store_secret(kaon_rig, namespace)
    example = EXAMPLES / "trainingjobs" / "cnn-digits-s3.yaml"
    kubectl(kaon_rig, "apply", "-n", namespace, "-f", str(example))
    name = "cnn-digits-s3"
    job = jobs.wait(
        namespace,
        name,
        lambda j: (
            (j.get("status") or {}).get("state") == "Running" and manifest_step(secret, j) >= 40
        ),
        "running, two checkpoints committed",
        TRAIN_TIMEOUT_S,
    )
    first = job["status"]["placement"]["cluster"]
    assert first in local_pools
    assert "lost" in kaon_rig_cli("stop", MEMBER_OF[first])
    committed = manifest_step(secret, job)  # the old attempt's processes are gone: final
    try:
        moved = jobs.wait(
            namespace,
            name,
            lambda j: (
                (j.get("status") or {}).get("placement", {}).get("cluster") not in (None, first)
            ),
            "placed on the other member",
            120,
        )
    finally:
        kaon_rig_cli("start", MEMBER_OF[first])
    second = moved["status"]["placement"]["cluster"]
    assert second in local_pools and second != first
    done = jobs.wait(
        namespace,
        name,
        lambda j: (j.get("status") or {}).get("state") in ("Succeeded", "Failed"),
        "finished",
        TRAIN_TIMEOUT_S,
    )
    status = done["status"]
    assert status["state"] == "Succeeded", status
    assert (status["attempt"], status["failovers"], status["restarts"]) == (1, 1, 0)
    assert status["placement"]["cluster"] == second
    # No step lost beyond the last checkpoint: the new attempt resumed at the last commit.
    assert status["progress"]["resumedFromStep"] == committed > 0
    assert status["metrics"]["accuracy"] >= 0.95  # cnn-digits' bar uninterrupted
    artifact = status["artifact"]
    assert artifact.startswith("s3://kaon/checkpoints/") and artifact.endswith("attempt-1/model")
    events = wait_event(kaon_rig, namespace, "TrainingJob", name, "FailedOver")
    message = next(m for _, r, m in events if r == "FailedOver")
    assert f"from cluster {first} (lost) to cluster {second}" in message
    # The old attempt's processes died with their machine before the end.
    old_log = (
        next(
            (paths.agent_dir(f"{MEMBER_OF[first]}-local-0") / "pods").glob(
                f"{namespace}_{name}-a0-w0_*"
            )
        )
        / "runtime.log"
    )
    text = old_log.read_text()
    assert "final parameters" not in text, text[-800:]
    assert manifest(secret, done)["attempt"] == 1
    # Back, the old member loses the old attempt's pods.
    core = kaon_rig.core(MEMBER_OF[first])
    selector = f"kaon.dev/job-name={name}"
    wait_for(
        lambda: core.list_namespaced_pod(namespace, label_selector=selector).items,
        lambda pods: all(p.metadata.deletion_timestamp for p in pods),
        "the old attempt's pods removed",
        120,
    )
