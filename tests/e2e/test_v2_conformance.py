"""The V2 server as clients meet it: a real `python -m kaon_kernels.serve` process on 127.0.0.1.

A digits CNN is trained for a few epochs by `python -m kaon_kernels.train` (the artifact a
TrainingJob leaves), served, and asked by tritonclient (binary by default, and JSON), by KServe's
InferenceRESTClient (protocol v2, in the KServe venv), and by raw HTTP. Every prediction must be
the arg-max of the model called directly on the same digits. Then concurrency (batches form),
malformed requests (hypothesis: only 4xx answers, the server stays up) and SIGTERM.
"""

from __future__ import annotations

import concurrent.futures
import gzip
import http.client
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import tritonclient.http as triton
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.datasets import load_digits  # type: ignore[import-untyped]

from kaon_kernels.artifact import load_artifact

from tlskit import issue

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
KSERVE_PY = REPO / ".venv" / "kserve" / "bin" / "python"
MODEL = "digits"
MAX_PAYLOAD = 64 * 1024
START_TIMEOUT_S = 120.0


@dataclass
class Served:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.port}"

    def connect(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)


def start_server(model_dir: Path, log: Path, *flags: str) -> Served:
    """The server on a free port (--port 0; the port read from its first log line), ready."""
    out = log.open("wb")
    command = ["-m", "kaon_kernels.serve", "--model-dir", str(model_dir), "--host", "127.0.0.1"]
    proc = subprocess.Popen(
        [sys.executable, *command, "--port", "0", "--grpc-port", "0", *flags],
        stdout=out,
        stderr=subprocess.STDOUT,
    )
    out.close()
    deadline = time.monotonic() + START_TIMEOUT_S
    port = 0
    while time.monotonic() < deadline and proc.poll() is None:
        text = log.read_text()
        found = re.search(r"listening on https?://127\.0\.0\.1:(\d+)", text)
        if found and "ready in" in text:
            port = int(found.group(1))
            break
        time.sleep(0.05)
    if not port:
        proc.kill()
        raise AssertionError(f"server did not become ready:\n{log.read_text()}")
    return Served(proc, port, log)


def stop_server(served: Served) -> int:
    if served.proc.poll() is None:
        served.proc.send_signal(signal.SIGTERM)
    return served.proc.wait(timeout=60)


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A TrainingJob's artifact: a small digits CNN trained for 3 epochs."""
    root = tmp_path_factory.mktemp("v2-artifact")
    spec = {
        "model": {"family": "cnn", "cnn": {"channels": [8, 16], "hiddenUnits": 32}},
        "training": {"epochs": 3, "batchSize": 64, "learningRate": 0.003},
        "checkpoint": {"enabled": False},
    }
    (root / "job.json").write_text(json.dumps(spec))
    env = {**os.environ, "KAON_JOB_NAME": MODEL, "KAON_TERMINATION_LOG": str(root / "term")}
    command = ["-m", "kaon_kernels.train", "--spec", str(root / "job.json")]
    subprocess.run(
        [sys.executable, *command, "--output", str(root / "model")],
        check=True,
        env=env,
        capture_output=True,
    )
    return root / "model"


@pytest.fixture(scope="module")
def server(artifact: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    # A latency bound long enough that concurrent requests reliably share batches.
    served = start_server(
        artifact,
        tmp_path_factory.mktemp("v2-server") / "server.log",
        "--max-batch-size",
        "16",
        "--max-latency-ms",
        "20",
        "--max-payload-bytes",
        str(MAX_PAYLOAD),
    )
    yield served
    stop_server(served)


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    """32 raw digits (pixel values 0..16) shaped (32, 1, 8, 8)."""
    return load_digits().images[:32].astype(np.float32).reshape(32, 1, 8, 8)


@pytest.fixture(scope="module")
def expected(artifact: Path, digits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(logits, labels) of the model called directly, with the artifact's normalisation."""
    model, meta = load_artifact(artifact)
    norm = meta["normalization"]
    with torch.no_grad():
        logits = model((torch.from_numpy(digits) - norm["mean"]) / norm["std"])
    return logits.numpy(), logits.argmax(1).numpy()


def triton_input(x: np.ndarray, binary: bool = True) -> triton.InferInput:
    tensor = triton.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=binary)
    return tensor


def test_tritonclient_with_its_defaults_speaks_binary_and_gets_the_models_predictions(
    server: Served, digits: np.ndarray, expected: tuple[np.ndarray, np.ndarray]
) -> None:
    client = triton.InferenceServerClient(server.url)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(MODEL) and client.is_model_ready(MODEL, "1")
    meta = client.get_model_metadata(MODEL)
    assert meta["name"] == MODEL and meta["versions"] == ["1"] and meta["platform"] == "pytorch"
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 8, 8]}]
    assert [(o["name"], o["datatype"], o["shape"]) for o in meta["outputs"]] == [
        ("logits", "FP32", [-1, 10]),
        ("probabilities", "FP32", [-1, 10]),
        ("label", "INT64", [-1]),
    ]
    assert client.get_server_metadata()["extensions"] == ["binary_tensor_data"]

    result = client.infer(MODEL, [triton_input(digits)])
    answer = result.get_response()
    assert all("binary_data_size" in o["parameters"] for o in answer["outputs"])
    assert isinstance(answer["id"], str) and answer["id"]
    logits, labels = expected
    np.testing.assert_array_equal(result.as_numpy("label"), labels)
    np.testing.assert_allclose(result.as_numpy("logits"), logits, rtol=1e-4, atol=1e-4)
    probs = result.as_numpy("probabilities")
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)

    versioned = client.infer(MODEL, [triton_input(digits[:3])], model_version="1")
    np.testing.assert_array_equal(versioned.as_numpy("label"), labels[:3])
    client.close()


def test_tritonclient_in_json_mode(
    server: Served, digits: np.ndarray, expected: tuple[np.ndarray, np.ndarray]
) -> None:
    client = triton.InferenceServerClient(server.url)
    result = client.infer(
        MODEL,
        [triton_input(digits, binary=False)],
        outputs=[triton.InferRequestedOutput("label", binary_data=False)],
        request_id="triton-json",
    )
    answer = result.get_response()
    assert answer["id"] == "triton-json" and answer["model_name"] == MODEL
    assert [o["name"] for o in answer["outputs"]] == ["label"]
    assert answer["outputs"][0]["data"] == expected[1].tolist()
    with pytest.raises(triton.InferenceServerException, match="unknown model 'cats'"):
        client.infer("cats", [triton_input(digits[:1], binary=False)])
    with pytest.raises(triton.InferenceServerException, match="unknown output 'scores'"):
        client.infer(
            MODEL, [triton_input(digits[:1])], outputs=[triton.InferRequestedOutput("scores")]
        )
    client.close()


def test_kserve_rest_client_with_protocol_v2(
    server: Served, digits: np.ndarray, expected: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    if not KSERVE_PY.is_file():
        pytest.fail(f"no KServe venv at {KSERVE_PY.relative_to(REPO)}: run `make setup`")
    (tmp_path / "inputs.json").write_text(json.dumps(digits.tolist()))
    script = Path(__file__).with_name("kserve_v2_client.py")
    done = subprocess.run(
        [str(KSERVE_PY), str(script), f"http://{server.url}", MODEL, str(tmp_path / "inputs.json")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout.splitlines()[-1])
    assert found["ready"] == [True, True, True]
    for mode in ("json", "binary"):
        answer = found[mode]
        assert answer["id"] == f"kserve-{mode}" and answer["model_name"] == MODEL
        assert answer["outputs"]["label"] == expected[1].tolist()
        np.testing.assert_allclose(answer["outputs"]["logits"], expected[0], rtol=1e-4, atol=1e-4)


def test_kserve_grpc_client_over_tls_with_a_token(
    artifact: Path, digits: np.ndarray, expected: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    """KServe's InferenceGRPCClient, unmodified, on the gRPC port of a server that serves TLS
    and wants a token: `contents` and `raw_input_contents` requests answer as the model does."""
    issued = issue(tmp_path / "pki", ["localhost"], ("127.0.0.1",))
    (tmp_path / "tokens").mkdir()
    (tmp_path / "tokens" / "client").write_text("grpc-client-token")
    tls = ("--tls-cert-file", str(issued.cert), "--tls-key-file", str(issued.key))
    served = start_server(
        artifact, tmp_path / "server.log", *tls, "--auth-tokens-dir", str(tmp_path / "tokens")
    )
    grpc_port = int(re.findall(r"gRPC listening on \S+:(\d+)", served.log.read_text())[0])
    (tmp_path / "inputs.json").write_text(json.dumps(digits[:4].tolist()))
    script = Path(__file__).with_name("kserve_v2_grpc_client.py")
    env = {"KAON_CLIENT_CA": str(issued.ca), "KAON_CLIENT_TOKEN": "grpc-client-token"}
    try:
        inputs = str(tmp_path / "inputs.json")
        done = subprocess.run(
            [str(KSERVE_PY), str(script), f"localhost:{grpc_port}", MODEL, inputs],
            capture_output=True, text=True, timeout=120, check=False, env={**os.environ, **env},
        )  # fmt: skip
    finally:
        stop_server(served)
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.splitlines()[-1])
    assert found["ready"] == [True, True, True]
    for mode in ("contents", "raw"):
        answer = found[mode]
        assert answer["id"] == f"kserve-{mode}" and answer["model_name"] == MODEL
        assert answer["outputs"]["label"] == expected[1][:4].tolist()


def call(
    conn: http.client.HTTPConnection,
    method: str,
    path: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    conn.request(method, path, body=body, headers=headers or {})
    response = conn.getresponse()
    return response.status, dict(response.getheaders()), response.read()


def infer_doc(x: np.ndarray, **extra: Any) -> dict[str, Any]:
    tensor = {"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.tolist()}
    return {"inputs": [tensor], **extra}


def test_raw_http_health_metadata_ids_and_keep_alive(
    server: Served, digits: np.ndarray, expected: tuple[np.ndarray, np.ndarray]
) -> None:
    conn = server.connect()
    assert call(conn, "GET", "/v2/health/live")[::2] == (200, b'{"live":true}')
    first_socket = conn.sock
    assert call(conn, "GET", "/v2/health/ready")[::2] == (200, b'{"ready":true}')
    status, _, body = call(conn, "GET", "/v2/models/digits/versions/1")
    assert status == 200 and json.loads(body)["name"] == MODEL
    path = "/v2/models/digits/infer"
    status, headers, body = call(
        conn, "POST", path, json.dumps(infer_doc(digits[:2], id="mine")).encode()
    )
    answer = json.loads(body)
    assert status == 200 and headers["Content-Type"] == "application/json"
    assert answer["id"] == "mine" and answer["model_version"] == "1"
    assert answer["outputs"][2]["data"] == expected[1][:2].tolist()
    # Nested or flat data, and a text/plain Content-Type: still JSON.
    flat = infer_doc(digits[:1])
    flat["inputs"][0]["data"] = digits[0].reshape(-1).tolist()
    status, _, body = call(
        conn, "POST", path, json.dumps(flat).encode(), {"Content-Type": "text/plain"}
    )
    generated = json.loads(body)["id"]
    assert status == 200 and isinstance(generated, str) and generated != "mine"
    assert conn.sock is first_socket  # one connection all along
    conn.close()


def test_raw_http_chunked_gzip_and_expect_continue_bodies(
    server: Served, digits: np.ndarray, expected: tuple[np.ndarray, np.ndarray]
) -> None:
    body = json.dumps(infer_doc(digits[:4])).encode()
    labels = expected[1][:4].tolist()
    conn = server.connect()
    status, _, answer = call(
        conn, "POST", "/v2/models/digits/infer", iter([body[:100], body[100:]])
    )
    assert status == 200 and json.loads(answer)["outputs"][2]["data"] == labels  # chunked
    status, _, answer = call(
        conn,
        "POST",
        "/v2/models/digits/infer",
        gzip.compress(body),
        {"Content-Encoding": "gzip"},
    )
    assert status == 200 and json.loads(answer)["outputs"][2]["data"] == labels
    conn.close()
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(
            b"POST /v2/models/digits/infer HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
        )
        reader = sock.makefile("rb")
        assert (reader.readline(), reader.readline()) == (b"HTTP/1.1 100 Continue\r\n", b"\r\n")
        sock.sendall(body)
        reply = read_response(reader)
        assert reply.startswith(b"HTTP/1.1 200 OK") and json.loads(reply.split(b"\r\n\r\n", 1)[1])


def test_pipelined_requests_are_answered_in_order_on_one_connection(
    server: Served, digits: np.ndarray, expected: tuple[np.ndarray, np.ndarray]
) -> None:
    def infer(i: int) -> bytes:
        body = json.dumps(infer_doc(digits[i : i + 1], id=f"p{i}")).encode()
        head = f"POST /v2/models/digits/infer HTTP/1.1\r\nContent-Length: {len(body)}\r\n\r\n"
        return head.encode() + body

    live = b"GET /v2/health/live HTTP/1.1\r\n\r\n"
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(infer(5) + live + infer(6) + infer(7))
        reader = sock.makefile("rb")
        replies = [read_response(reader) for _ in range(4)]
    bodies = [json.loads(r.split(b"\r\n\r\n", 1)[1]) for r in replies]
    assert bodies[1] == {"live": True}
    for doc, i in zip((bodies[0], bodies[2], bodies[3]), (5, 6, 7), strict=True):
        assert doc["id"] == f"p{i}" and doc["outputs"][2]["data"] == [int(expected[1][i])]


def read_response(reader: io.BufferedReader) -> bytes:
    """One whole response (Content-Length framed), or what came before the peer closed."""
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        line = reader.readline()
        if not line:
            return head
        head += line
    found = re.search(rb"(?i)content-length: *(\d+)", head)
    return head + reader.read(int(found.group(1)) if found else 0)


def bad(kind: str) -> dict[str, Any]:
    doc = infer_doc(np.zeros((1, 1, 8, 8), dtype=np.float32))
    tensor = doc["inputs"][0]
    if kind == "datatype":
        tensor["datatype"] = "BYTES"
    elif kind == "shape":
        tensor["shape"] = [1, 8, 8]
    elif kind == "count":
        tensor["data"] = [0.0] * 10
        tensor["shape"] = [1, 64]
    elif kind == "missing":
        del tensor["data"]
    return doc


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "words"),
    [
        ("GET", "/v1/models", None, 404, "no route"),
        ("GET", "/v2/models/cats", None, 404, "unknown model 'cats'"),
        ("POST", "/v2/models/digits/versions/9/infer", b"{}", 404, "no version '9'"),
        ("PUT", "/v2/health/ready", None, 405, "use GET"),
        ("GET", "/v2/models/digits/infer", None, 405, "use POST"),
        ("POST", "/v2/models/digits/infer", b'{"inputs": [', 400, "malformed JSON"),
        ("POST", "/v2/models/digits/infer", bad("datatype"), 400, "datatype BYTES"),
        ("POST", "/v2/models/digits/infer", bad("shape"), 400, "does not match [-1, 1, 8, 8]"),
        ("POST", "/v2/models/digits/infer", bad("count"), 400, "10 values in 'data'"),
        ("POST", "/v2/models/digits/infer", bad("missing"), 400, "needs 'data'"),
    ],
)
def test_raw_http_mistakes_get_4xx_naming_the_problem(
    server: Served, method: str, path: str, body: Any, status: int, words: str
) -> None:
    conn = server.connect()
    raw = json.dumps(body).encode() if isinstance(body, dict) else body
    got, headers, answer = call(conn, method, path, raw)
    assert got == status and headers["Content-Type"] == "application/json"
    assert words in json.loads(answer)["error"]
    if status == 405:
        assert headers["Allow"] in ("GET", "POST")
    assert call(conn, "GET", "/v2/health/live")[0] == 200  # the connection lives on
    conn.close()


def test_a_payload_over_the_limit_gets_413_and_a_closed_connection(server: Served) -> None:
    conn = server.connect()
    status, headers, answer = call(
        conn, "POST", "/v2/models/digits/infer", b" " * (MAX_PAYLOAD + 1)
    )
    assert status == 413 and "over the 65536-byte limit" in json.loads(answer)["error"]
    assert headers["Connection"] == "close"
    conn.close()


def batch_histogram(served: Served) -> tuple[float, float]:
    """(forward passes so far, those with a single sample) from /metrics."""
    conn = served.connect()
    text = call(conn, "GET", "/metrics")[2].decode()
    conn.close()
    count = re.search(r'kaon_serve_batch_size_count\{model="digits"\} (\S+)', text)
    single = re.search(r'kaon_serve_batch_size_bucket\{le="1\.0",model="digits"\} (\S+)', text)
    assert count and single, text
    return float(count.group(1)), float(single.group(1))


def test_concurrent_requests_share_forward_passes_and_all_get_their_own_answer(
    server: Served, digits: np.ndarray, expected: tuple[np.ndarray, np.ndarray]
) -> None:
    passes, singles = batch_histogram(server)
    start = threading.Barrier(64)

    def one(i: int) -> tuple[str, list[int]]:
        conn = server.connect()
        body = json.dumps(infer_doc(digits[i % 32 : i % 32 + 1], id=f"c{i}")).encode()
        conn.connect()
        start.wait()
        status, _, answer = call(conn, "POST", "/v2/models/digits/infer", body)
        conn.close()
        assert status == 200
        doc = json.loads(answer)
        return doc["id"], doc["outputs"][2]["data"]

    with concurrent.futures.ThreadPoolExecutor(64) as pool:
        answers = list(pool.map(one, range(64)))
    assert answers == [(f"c{i}", [int(expected[1][i % 32])]) for i in range(64)]
    after_passes, after_singles = batch_histogram(server)
    batched = (after_passes - passes) - (after_singles - singles)
    assert batched >= 1, "no forward pass held more than one sample"
    assert after_passes - passes < 64


fuzz_text = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=12)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | fuzz_text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(fuzz_text, inner, max_size=4),
    max_leaves=12,
)
tensors = st.fixed_dictionaries(
    {},
    optional={
        "name": st.just("input") | json_values,
        "shape": st.lists(st.integers(-1, 70), max_size=4) | json_values,
        "datatype": st.sampled_from(["FP32", "FP64", "INT8", "BYTES", "BOOL", "fp32"]),
        "data": st.lists(st.floats(width=32) | st.integers(), max_size=70) | json_values,
        "parameters": st.fixed_dictionaries({"binary_data_size": st.integers(-2, 300)}),
    },
)
infer_docs = st.fixed_dictionaries(
    {"inputs": st.lists(tensors, min_size=0, max_size=2) | json_values},
    optional={
        "id": json_values,
        "outputs": st.lists(st.fixed_dictionaries({"name": fuzz_text}), max_size=2) | json_values,
        "parameters": st.fixed_dictionaries({"binary_data_output": json_values}),
    },
)


def near_valid(field: str, value: Any, binary: bool) -> bytes:
    """A valid one-digit request with one field of its input replaced by `value`."""
    tensor: dict[str, Any] = {"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32"}
    if binary:
        tensor["parameters"] = {"binary_data_size": 256}
    else:
        tensor["data"] = [1.0] * 64
    tensor[field] = value
    return json.dumps({"inputs": [tensor]}).encode()


near_valid_bodies = st.builds(
    near_valid,
    st.sampled_from(["name", "shape", "datatype", "data", "parameters"]),
    json_values
    | st.lists(st.floats(width=32) | st.integers() | fuzz_text | st.booleans(), max_size=70),
    st.booleans(),
)
bodies = (
    st.binary(max_size=300)
    | json_values.map(lambda v: json.dumps(v).encode())
    | infer_docs.map(lambda d: json.dumps(d).encode())
    | near_valid_bodies
)
# "exact": the JSON's own length, so binary tensors after it are read as such.
header_lengths = st.none() | st.just("exact") | st.integers(-3, 400).map(str) | fuzz_text
tails = st.binary(max_size=300) | st.just(bytes(256)) | st.just(b"\xff" * 256)
paths = st.sampled_from(
    ["/v2/models/digits/infer"] * 6
    + ["/v2/models/digits/versions/1/infer", "/v2/models/x/infer", "/v2"]
)
# Whole request heads (never a body the server would wait for): random bytes, or a request
# line and headers assembled from plausible and implausible pieces.
header_pairs = st.tuples(
    st.sampled_from(["Content-Length", "Transfer-Encoding", "Expect", "Connection"]) | fuzz_text,
    st.sampled_from(["0", "-1", "abc", "1, 2", "gzip", "chunked, gzip", "magic", "close"])
    | fuzz_text,
)
structured_heads = st.builds(
    lambda method, path, version, pairs: (
        f"{method} {path} {version}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in pairs) + "\r\n"
    ).encode("latin-1"),
    st.sampled_from(["GET", "POST", "PUT", "get", ""]) | fuzz_text,
    st.sampled_from(["/v2", "/v2/models/digits/infer", "/v2/health/ready", "*", ""]) | fuzz_text,
    st.sampled_from(["HTTP/1.1", "HTTP/1.0", "HTTP/2", "HTTP/1.1x"]) | fuzz_text,
    st.lists(header_pairs, max_size=4),
).filter(lambda head: b"Content-Length: 0\r\n" in head or b"Content-Length" not in head)
random_heads = (
    st.binary(min_size=1, max_size=200)
    .map(lambda b: b.replace(b"\r", b"").lstrip(b"\n") + b"\r\n\r\n")
    .filter(lambda head: len(head) > 4)
)
raw_heads = structured_heads | random_heads


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(body=bodies, header_length=header_lengths, path=paths, tail=tails)
def test_fuzzed_infer_requests_get_only_4xx_or_answers(
    server: Served, body: bytes, header_length: str | None, path: str, tail: bytes
) -> None:
    headers = {"Content-Type": "application/json"}
    if header_length is not None:
        exact = str(len(body))
        headers["Inference-Header-Content-Length"] = (
            exact if header_length == "exact" else header_length
        )
        body += tail
    conn = server.connect()
    status, _, answer = call(conn, "POST", path, body, headers)
    conn.close()
    assert status == 200 or 400 <= status < 500, answer
    if status != 200:
        assert json.loads(answer)["error"]


@settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(head=raw_heads)
def test_fuzzed_request_heads_get_an_answer_never_silence_or_5xx(
    server: Served, head: bytes
) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(head)
        reply = read_response(sock.makefile("rb"))
    assert reply.startswith(b"HTTP/1.1 "), f"no answer to {head!r}"
    status = int(reply[9:12])
    assert status == 200 or 400 <= status < 500, reply[:300]


def test_the_server_survives_the_fuzzing_and_still_predicts(
    server: Served, digits: np.ndarray, expected: tuple[np.ndarray, np.ndarray]
) -> None:
    client = triton.InferenceServerClient(server.url)
    assert client.is_server_ready()
    result = client.infer(MODEL, [triton_input(digits)])
    np.testing.assert_array_equal(result.as_numpy("label"), expected[1])
    client.close()
    assert server.proc.poll() is None


def test_sigterm_answers_the_request_in_flight_then_exits_0(
    artifact: Path, digits: np.ndarray, expected: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    # A long latency bound holds a lone request in the queue while SIGTERM arrives.
    served = start_server(artifact, tmp_path / "server.log", "--max-latency-ms", "1500")
    conn = served.connect()
    conn.request("POST", "/v2/models/digits/infer", json.dumps(infer_doc(digits[:1])).encode())
    probe = served.connect()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        metrics = call(probe, "GET", "/metrics")[2].decode()
        if 'kaon_serve_inflight_requests{model="digits"} 1.0' in metrics:
            break
        time.sleep(0.01)
    else:
        raise AssertionError("the request never got in flight")
    probe.close()
    served.proc.send_signal(signal.SIGTERM)
    response = conn.getresponse()
    answer = json.loads(response.read())
    assert response.status == 200 and answer["outputs"][2]["data"] == [int(expected[1][0])]
    assert response.getheader("Connection") == "close"
    assert served.proc.wait(timeout=60) == 0
    assert "stopped" in served.log.read_text()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", served.port), timeout=5).close()
