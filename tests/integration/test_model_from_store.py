"""A model served from the rig's real S3 server: the artifact a TrainingJob publishes (written by
`save_artifact`, uploaded by the runtime's own store), downloaded by the V2 server's fetch path,
loaded and answering; and the one-line refusals for a key that is not there or bad credentials."""

from __future__ import annotations

import base64
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from kaon.builders.worker import STORE_ENV
from kaon_kernels import reference
from kaon_kernels.artifact import load_artifact, save_artifact
from kaon_kernels.config import CNNConfig, ModelConfig
from kaon_kernels.models import build_model
from kaon_kernels.serve.fetch import fetch_model
from kaon_kernels.serve.model import Engine
from kaon_kernels.serve.settings import SettingsError
from kaon_kernels.store import S3Store, s3_client
from kaon_rig import s3

from kaonrig import Rig, wait_for

SHAPE = (1, 8, 8)
CFG = ModelConfig(family="cnn", cnn=CNNConfig(channels=[4], hidden_units=16))
SERVE = [sys.executable, "-m", "kaon_kernels.serve", "--name", "digits", "--grpc-port", "0"]


@pytest.fixture(scope="module")
def env(kaon_rig: Rig) -> dict[str, str]:
    """The AWS_* variables a server gets from the member's copy of the hub's Secret kaon-s3."""
    found = kaon_rig.core("hub").read_namespaced_secret(s3.SECRET_NAME, s3.SECRET_NAMESPACE)
    return {var: base64.b64decode(found.data[key]).decode() for var, key, _ in STORE_ENV}


@pytest.fixture(scope="module")
def published(env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> str:
    """A trained model's artifact, published as a TrainingJob's attempt 3 publishes it."""
    torch.manual_seed(0)
    model = build_model(CFG, SHAPE, 10).eval()
    written = tmp_path_factory.mktemp("written")
    save_artifact(written, model, CFG, SHAPE, 10, 4.9, 6.0, "digits")
    inputs = torch.rand(64, *SHAPE) * 16
    reference.save(written, reference.build(inputs, torch.arange(64) % 10, 10))
    prefix = f"s3://{s3.BUCKET}/test-serve-{uuid.uuid4().hex[:8]}/team/digits/u1"
    return S3Store(prefix, 3, s3_client(env)).publish(written)


def test_the_fetched_artifact_is_the_published_one_and_serves_it(
    env: dict[str, str], published: str, tmp_path: Path
) -> None:
    assert published.endswith("/attempt-3/model")
    fetch_model(published, tmp_path / "models", env)
    fetched = sorted(p.name for p in (tmp_path / "models").iterdir())
    assert fetched == ["model.json", "model.pt", "reference.json"]
    assert json.loads((tmp_path / "models" / "model.json").read_text())["name"] == "digits"
    engine = Engine(tmp_path / "models", "digits")
    assert engine.monitor is not None  # the drift reference came along
    x = torch.rand(3, *SHAPE) * 16
    model, _ = load_artifact(tmp_path / "models")
    with torch.no_grad():
        direct = model((x - 4.9) / 6.0)
    assert engine.forward(x.clone()).outputs["label"].rows == direct.argmax(1).tolist()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _get(port: int, path: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        return conn.getresponse().status
    except OSError:
        return 0
    finally:
        conn.close()


@pytest.fixture
def server(env: dict[str, str], published: str, tmp_path: Path) -> Iterator[int]:
    """`python -m kaon_kernels.serve` as kaon starts it for a model in a store: an empty model
    directory, KAON_MODEL_URI and the store's AWS_* variables."""
    port = _free_port()
    proc = subprocess.Popen(
        [*SERVE, "--model-dir", str(tmp_path / "models"), "--host", "127.0.0.1"],
        env={**os.environ, **env, "KAON_MODEL_URI": published, "KAON_SERVE_PORT": str(port)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: _get(port, "/v2/health/ready"), lambda s: s == 200, "ready", 120.0)
        yield port
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0


def test_a_server_given_an_s3_uri_downloads_loads_and_answers(server: int, tmp_path: Path) -> None:
    model, _ = load_artifact(tmp_path / "models")  # what the server downloaded
    x = torch.rand(2, *SHAPE) * 16
    doc = {"inputs": [{"name": "input", "shape": [2, *SHAPE], "datatype": "FP32"}]}
    doc["inputs"][0]["data"] = x.flatten().tolist()
    conn = http.client.HTTPConnection("127.0.0.1", server, timeout=30)
    conn.request("POST", "/v2/models/digits/infer", json.dumps(doc))
    response = conn.getresponse()
    answer = json.loads(response.read())
    assert response.status == 200, answer
    logits = next(o for o in answer["outputs"] if o["name"] == "logits")["data"]
    with torch.no_grad():
        direct = model((x - 4.9) / 6.0)
    torch.testing.assert_close(torch.tensor(logits).reshape(2, 10), direct, rtol=1e-4, atol=1e-4)


def refusal(uri: str, env: dict[str, str], model_dir: Path) -> tuple[int, list[str]]:
    done = subprocess.run(
        [*SERVE, "--model-dir", str(model_dir), "--model-uri", uri],
        env={**os.environ, **env},
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return done.returncode, done.stderr.splitlines()


def test_a_missing_key_is_one_line_naming_it_and_exit_2(
    env: dict[str, str], published: str, tmp_path: Path
) -> None:
    missing = published.replace("/attempt-3/", "/attempt-4/")
    code, lines = refusal(missing, env, tmp_path)
    assert code == 2
    assert lines == [
        f"kaon-serve: {missing}/model.json: no such key (not a kaon model artifact prefix?)"
    ]
    with pytest.raises(SettingsError, match="no such key"):
        fetch_model(f"s3://{s3.BUCKET}/no-such-prefix-{uuid.uuid4().hex}", tmp_path, env)


def test_bad_credentials_are_one_line_naming_the_uri_and_exit_2(
    env: dict[str, str], published: str, tmp_path: Path
) -> None:
    wrong = env | {"AWS_SECRET_ACCESS_KEY": "not-the-secret"}
    code, lines = refusal(published, wrong, tmp_path)
    assert code == 2
    assert lines == [
        f"kaon-serve: {published}/model.json: access denied (check the credentials of the "
        "store Secret)"
    ]
    assert not list(tmp_path.iterdir())  # nothing half-downloaded is left for a loader


def test_an_artifact_from_before_drift_references_is_fetched_and_served_without_drift(
    env: dict[str, str], tmp_path: Path
) -> None:
    written = tmp_path / "written"
    save_artifact(written, build_model(CFG, SHAPE, 10).eval(), CFG, SHAPE, 10, 4.9, 6.0, "old")
    prefix = f"s3://{s3.BUCKET}/test-serve-{uuid.uuid4().hex[:8]}/team/old/u1"
    published = S3Store(prefix, 0, s3_client(env)).publish(written)
    fetch_model(published, tmp_path / "models", env)
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["model.json", "model.pt"]
    assert Engine(tmp_path / "models", "old").monitor is None
