"""The runtime's S3 checkpoint store against the rig's real S3 server: commits through the
manifest, resume after SIGTERM from the last committed step, and the fence between attempts."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
import torch

from kaon_kernels.store import FencedOffError, S3Store, s3_client
from kaon_rig import s3

from kaonrig import REPO, Rig, wait_for

SPEC = """model: {family: cnn, cnn: {channels: [8]}}
training: {epochs: 30, batchSize: 32}
checkpoint: {intervalSteps: 20}
"""


@pytest.fixture(scope="module")
def store_env(kaon_rig: Rig) -> dict[str, str]:
    """The AWS_* variables of the hub's Secret kaon-s3, as kaon puts them into a worker."""
    found = kaon_rig.core("hub").read_namespaced_secret(s3.SECRET_NAME, s3.SECRET_NAMESPACE)
    data = {k: base64.b64decode(v).decode() for k, v in (found.data or {}).items()}
    return {
        "AWS_ACCESS_KEY_ID": data["accessKeyId"],
        "AWS_SECRET_ACCESS_KEY": data["secretAccessKey"],
        "AWS_ENDPOINT_URL_S3": data["endpoint"],
        "AWS_DEFAULT_REGION": data["region"],
    }


@pytest.fixture
def uri() -> str:
    return f"s3://{s3.BUCKET}/test-store-{uuid.uuid4().hex[:8]}"


def state(step: int) -> dict[str, Any]:
    return {"format": "test", "step": step, "weights": torch.full((4,), float(step))}


def test_the_newest_committed_checkpoint_is_resumed(store_env: dict[str, str], uri: str) -> None:
    store = S3Store(uri, 0, s3_client(store_env))
    assert store.latest() is None
    for step in (10, 20, 30):
        store.save(step, state(step))
    got = store.latest()
    assert (
        got is not None and got["step"] == 30 and torch.equal(got["weights"], state(30)["weights"])
    )
    manifest, _ = store.manifest()
    assert manifest is not None and (manifest["attempt"], manifest["step"]) == (0, 30)
    listed = store.client.list_objects_v2(Bucket=store.bucket, Prefix=store.key("attempt-0"))
    keys = sorted(o["Key"].rsplit("/", 1)[1] for o in listed.get("Contents", []))
    assert keys == ["step-000000020.pt", "step-000000030.pt"]  # the newest two are kept


def test_an_older_attempt_can_neither_commit_nor_resume_once_a_newer_one_has(
    store_env: dict[str, str], uri: str
) -> None:
    old, new = S3Store(uri, 0, s3_client(store_env)), S3Store(uri, 1, s3_client(store_env))
    old.save(20, state(20))
    resumed = new.latest()
    assert resumed is not None and resumed["step"] == 20  # the moved gang resumes from it
    new.save(40, state(40))
    with pytest.raises(FencedOffError, match="attempt 1 owns"):
        old.save(60, state(60))
    with pytest.raises(FencedOffError):
        old.latest()
    with pytest.raises(FencedOffError):
        old.publish(Path("/nonexistent"))
    manifest, _ = new.manifest()
    assert manifest is not None and (manifest["attempt"], manifest["step"]) == (1, 40)


def test_a_commit_that_lost_the_race_reads_again_and_is_fenced(
    store_env: dict[str, str], uri: str
) -> None:
    """The old attempt read the manifest, the new one committed, then the old one writes: its
    conditional write (If-Match the ETag it read) is refused and it finds itself fenced."""
    old, new = S3Store(uri, 0, s3_client(store_env)), S3Store(uri, 1, s3_client(store_env))
    old.save(20, state(20))
    real_manifest = old.manifest
    calls = 0

    def manifest_then_new_commit() -> tuple[dict[str, Any] | None, str | None]:
        nonlocal calls
        calls += 1
        seen = real_manifest()
        if calls == 1:
            new.save(40, state(40))  # lands between the old attempt's read and its write
        return seen

    old.manifest = manifest_then_new_commit  # type: ignore[method-assign]
    with pytest.raises(FencedOffError):
        old.save(60, state(60))
    assert calls == 2
    manifest, _ = new.manifest()
    assert manifest is not None and (manifest["attempt"], manifest["step"]) == (1, 40)


def test_a_worker_stopped_by_sigterm_checkpoints_and_the_next_resumes_there(
    store_env: dict[str, str], uri: str, tmp_path: Path
) -> None:
    spec = tmp_path / "job.yaml"
    spec.write_text(SPEC)
    env = dict(os.environ, **store_env, KAON_CHECKPOINT_URI=uri, KAON_ATTEMPT="0")
    env["PYTHONPATH"] = str(REPO / "kernels")
    command = [sys.executable, "-m", "kaon_kernels.train", "--spec", str(spec)]
    store = S3Store(uri, 0, s3_client(store_env))
    first = subprocess.Popen([*command, "--output", str(tmp_path / "a")], env=env)
    try:
        wait_for(store.manifest, lambda m: m[0] is not None, "a first commit", 120)
        first.send_signal(signal.SIGTERM)
        assert first.wait(60) == 143
    finally:
        first.kill()
    manifest, _ = store.manifest()
    assert manifest is not None
    stopped_at = manifest["step"]
    second = subprocess.run(
        [*command, "--output", str(tmp_path / "b")],
        env=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert second.returncode == 0, second.stderr[-2000:]
    assert f"resuming at step {stopped_at} of" in second.stderr
    final, _ = store.manifest()
    assert final is not None and final["artifact"].endswith("attempt-0/model")
