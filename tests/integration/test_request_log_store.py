"""The request log on the rig's real S3 server: a V2 server started as kaon starts one with
`requestLogging` writes every other answered request under its model, revision and pod, and
uploads what it holds when it stops; a store that refuses the credentials costs the records,
counted, not the server."""

from __future__ import annotations

import gzip
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import uuid
from array import array
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import torch

from kaon.builders.server import REQUEST_LOG_ENV_PREFIX
from kaon.builders.worker import STORE_ENV
from kaon_kernels.artifact import save_artifact
from kaon_kernels.config import CNNConfig, ModelConfig
from kaon_kernels.models import build_model
from kaon_kernels.serve.protocol import BatchResult, InferRequest, OutputRows, Signature, TensorSpec
from kaon_kernels.serve.requestlog import UPLOAD_FAILED, Counters, LogPlace, RequestLog
from kaon_kernels.serve.requestlog_store import s3_put
from kaon_kernels.store import s3_client
from kaon_rig import s3

from kaonrig import wait_for

SHAPE = (1, 8, 8)
CFG = ModelConfig(family="cnn", cnn=CNNConfig(channels=[4], hidden_units=16))
POD = "digits-canary-5f7c9-x2k4q"


@pytest.fixture(scope="module")
def env(request: pytest.FixtureRequest) -> dict[str, str]:
    """The AWS_* variables of the rig's S3 server (what the member's copy of the hub's Secret
    kaon-s3 holds). A running server is used as it is: these tests need no cluster."""
    if not s3.is_ready():
        request.getfixturevalue("kaon_rig")
    data = s3.secret_data()
    return {var: data[key] for var, key, _ in STORE_ENV}


@pytest.fixture
def prefix(env: dict[str, str]) -> Iterator[str]:
    """A key prefix of this test in the rig's bucket, emptied afterwards."""
    prefix = f"test-request-log-{uuid.uuid4().hex[:8]}"
    yield prefix
    client = s3_client(env)
    for obj in client.list_objects_v2(Bucket=s3.BUCKET, Prefix=prefix).get("Contents", []):
        client.delete_object(Bucket=s3.BUCKET, Key=obj["Key"])


def objects(env: dict[str, str], prefix: str) -> dict[str, list[dict[str, Any]]]:
    """Each object under `prefix`, as its JSON lines."""
    client = s3_client(env)
    listed = client.list_objects_v2(Bucket=s3.BUCKET, Prefix=prefix).get("Contents", [])
    found = {}
    for obj in listed:
        body = client.get_object(Bucket=s3.BUCKET, Key=obj["Key"])["Body"].read()
        found[obj["Key"]] = [json.loads(line) for line in gzip.decompress(body).splitlines()]
    return found


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _call(port: int, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, None if body is None else json.dumps(body))
        response = conn.getresponse()
        data = response.read()
        return response.status, json.loads(data) if data.startswith(b"{") else data
    except OSError:
        return 0, None
    finally:
        conn.close()


def test_a_server_logs_every_other_request_under_its_pod_and_uploads_them_as_it_stops(
    env: dict[str, str], prefix: str, tmp_path: Path
) -> None:
    torch.manual_seed(0)
    save_artifact(tmp_path, build_model(CFG, SHAPE, 10).eval(), CFG, SHAPE, 10, 4.9, 6.0, "d")
    port = _free_port()
    own_credentials = {REQUEST_LOG_ENV_PREFIX + var: value for var, value in env.items()}
    server_env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "kaon_kernels.serve", "--model-dir", str(tmp_path)],
        env=server_env
        | own_credentials
        | {
            "KAON_MODEL_NAME": "digits",
            "KAON_SERVE_HOST": "127.0.0.1",
            "KAON_SERVE_PORT": str(port),
            "KAON_SERVE_GRPC_PORT": "0",
            "KAON_REQUEST_LOG_URI": f"s3://{s3.BUCKET}/{prefix}",
            "KAON_REQUEST_LOG_SAMPLE_RATE": "0.5",
            "KAON_REVISION": "canary",
            "POD_NAME": POD,
        },
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    started = datetime.now(UTC).date()
    try:
        wait_for(
            lambda: _call(port, "GET", "/v2/health/ready")[0], lambda s: s == 200, "ready", 120
        )
        sent, labels = {}, {}
        for n in range(4):
            pixels = [float((n + i) % 17) for i in range(2 * 64)]
            doc = {
                "id": f"r{n}",
                "inputs": [{"name": "input", "shape": [2, 64], "datatype": "FP32", "data": pixels}],
                "outputs": [{"name": "label"}, {"name": "probabilities"}],
            }
            status, answer = _call(port, "POST", "/v2/models/digits/infer", doc)
            assert status == 200, answer
            sent[f"r{n}"] = pixels
            labels[f"r{n}"] = answer["outputs"][0]["data"]
        _, metrics = _call(port, "GET", "/metrics")
        assert b"kaon_request_log_records_total" in metrics
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    assert f"request log: 50% of the infer requests to s3://{s3.BUCKET}/{prefix}" in stderr

    found = objects(env, prefix)
    (key,) = found
    layout = re.escape(f"{prefix}/digits/canary/{POD}/") + (
        r"(\d{4}-\d{2}-\d{2})/\d{8}T\d{6}\.\d{3}Z-000000\.jsonl\.gz"
    )
    matched = re.fullmatch(layout, key)
    assert matched is not None, key
    assert started.isoformat() <= matched.group(1) <= datetime.now(UTC).date().isoformat()
    lines = found[key]
    assert [line["id"] for line in lines] == ["r0", "r2"]
    for line in lines:
        assert (line["model"], line["revision"]) == ("digits", "canary")
        assert line["inputs"] == [
            {"name": "input", "datatype": "FP32", "shape": [2, 1, 8, 8], "data": sent[line["id"]]}
        ]
        label, probabilities = line["outputs"]
        assert (label["name"], label["shape"], label["data"]) == ("label", [2], labels[line["id"]])
        assert probabilities["shape"] == [2, 10] and len(probabilities["data"]) == 20
        assert line["latency_s"] > 0 and line["time"].endswith("Z")


SIG = Signature(
    "digits", "1", TensorSpec("input", "FP32", (-1, 2)), (TensorSpec("label", "INT64", (-1,)),)
)


def test_a_store_refusing_the_credentials_costs_the_records_counted_not_the_server(
    env: dict[str, str], prefix: str
) -> None:
    dropped: dict[str, int] = {}
    said: list[str] = []
    counters = Counters(lambda n: None, lambda reason, n: dropped.update({reason: n}))
    wrong = env | {"AWS_SECRET_ACCESS_KEY": "not-the-secret"}
    log = RequestLog(
        LogPlace("digits", "stable", POD),
        SIG,
        s3_put(f"s3://{s3.BUCKET}/{prefix}", wrong),
        1.0,
        counters,
        retry_delays_s=(0.0, 0.0),
        say=said.append,
    )
    request = InferRequest("r0", array("f", [1.0, 2.0]), 1, (("label", False),))
    result = BatchResult({"label": OutputRows([3], b"", 8)})
    log.append(request, [(result, 0, 1)], 0.001)
    assert log.close()
    assert dropped == {UPLOAD_FAILED: 1}
    assert "dropped 1 records" in said[0] and "ClientError" in said[0]
    assert objects(env, prefix) == {}
