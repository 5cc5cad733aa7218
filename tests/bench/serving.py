"""Serving benchmark: kaon's V2 server against KServe's ModelServer, same model, same load.

Both serve the same artifact (a digits CNN like examples/trainingjobs/cnn-digits.yaml, channels
[16, 32], trained briefly into a temporary directory) on this machine's CPU, one server at a
time, with one torch thread each. KServe runs with its default server settings (see
kserve_server.py). The same closed-loop generator (loadgen.py: one keep-alive connection per
user, V2 JSON infer requests of one real digit each, identical bytes for both servers) drives
each at concurrency 1, 8 and 32: a warm-up, then a fixed measured window.

Figures (value: kaon, baseline: KServe, ratio = kaon / KServe):
- `serving.cN.rps`: answers per second at concurrency N (ratio > 1: kaon serves more);
- `serving.cN.p50_ms`, `serving.cN.p99_ms`: latency (ratio < 1: kaon answers faster);
- `serving.cold_start_s`: process spawn to `/v2/health/ready` answering 200, median of 3
  (ratio < 1: kaon is ready sooner).

The HTTP layer, same run: kaon's own HTTP/1.1 layer (`kaon_kernels.serve.server`/`http11`)
against aiohttp.web in front of the very same `App`, model and batcher (aiohttp_front.py),
driven by the same generator with V2 JSON requests and with binary-tensor requests (one digit
each, binary output asked). Before its load points each server answers a fixed set of probes
(health, readiness, JSON/binary/gzip infer, 400/404/405) and both must give the same status,
Content-Type, V2 headers and body. Figures (value: own layer, baseline: aiohttp, ratio = own /
aiohttp): `serving.http_layer.cN.{rps,p50_ms,p99_ms}` (JSON) and
`serving.http_layer.binary.cN.{rps,p50_ms,p99_ms}`.

gRPC, same run: a grpc.aio client in this process (32 concurrent callers on 4 channels, a
ModelInfer of one digit as `raw_input_contents`, warm-up then the measured window) drives kaon's
V2 gRPC port, and KServe's (its ModelServer opens one). Figures: `serving.grpc.c32.{rps,p50_ms,
p99_ms}` (value: kaon gRPC, baseline: kaon HTTP JSON at c32, same process) and
`serving.grpc_vs_kserve.c32.*` (baseline: KServe's gRPC).

The event loop, same run: kaon's server on uvloop (its default where installed) against the same
server with `--loop asyncio`, V2 JSON at c32: `serving.event_loop.c32.{rps,p50_ms,p99_ms}`
(value: uvloop, baseline: asyncio's loop). The aiohttp front runs on the same loop as the own
layer, so the HTTP-layer figures compare the layers only.

The servers run alternately for `--rounds` rounds (2) and each figure keeps its best round, the
one least disturbed by other load on a shared machine (as kernels.py does).

Run: `.venv/bin/python tests/bench/serving.py [--duration S] [--warmup S] [--rounds N] [--quick]`;
`--http-layer-only` runs only the HTTP-layer comparison (no KServe venv needed, no cold starts;
the first server of each round alternates), `--aiohttp-flavor application` puts a
`web.Application` in front instead of aiohttp's low-level `web.Server`.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import http.client
import json
import os
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loadgen import Tally, closed_loop, http_request, percentile
from results import record, table

REPO = Path(__file__).resolve().parents[2]
KSERVE_PY = REPO / ".venv" / "kserve" / "bin" / "python"
HOST = "127.0.0.1"
MODEL = "digits"
CONCURRENCY = (1, 8, 32)
READY_TIMEOUT_S = 120.0

AIOHTTP_FRONT = Path(__file__).with_name("aiohttp_front.py")
INFER = f"/v2/models/{MODEL}/infer"
HEADER_LENGTH = "Inference-Header-Content-Length"

Spawn = Callable[[Path, int], list[str]]
GRPC_USERS = 32
GRPC_CHANNELS = 4
GRPC_PORTS: dict[int, int] = {}  # a spawned server's HTTP port -> its gRPC port


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def kaon_command(model_dir: Path, port: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "kaon_kernels.serve",
        "--model-dir",
        str(model_dir),
        "--host",
        HOST,
        "--port",
        str(port),
        "--threads",
        "1",
        "--grpc-port",
        "-1",  # kaon_grpc_command turns it on where it is measured
    ]


def kaon_asyncio_command(model_dir: Path, port: int) -> list[str]:
    return [*kaon_command(model_dir, port), "--loop", "asyncio"]


def kaon_grpc_command(model_dir: Path, port: int) -> list[str]:
    GRPC_PORTS[port] = free_port()
    return [*kaon_command(model_dir, port), "--grpc-port", str(GRPC_PORTS[port])]


def aiohttp_command(flavor: str) -> Spawn:
    def command(model_dir: Path, port: int) -> list[str]:
        own = kaon_command(model_dir, port)
        return [sys.executable, str(AIOHTTP_FRONT), "--flavor", flavor, *own[3:]]

    return command


def kserve_command(model_dir: Path, port: int) -> list[str]:
    return [
        str(KSERVE_PY),
        str(Path(__file__).with_name("kserve_server.py")),
        "--model-dir",
        str(model_dir),
        "--name",
        MODEL,
        "--threads",
        "1",
        "--http_port",
        str(port),
        "--grpc_port",
        str(GRPC_PORTS.setdefault(port, free_port())),
    ]


def train_artifact(out: Path) -> None:
    """A digits CNN like the cnn-digits example, trained for 2 epochs (about 10 s)."""
    spec = {
        "model": {"family": "cnn", "cnn": {"channels": [16, 32]}},
        "training": {"epochs": 2, "batchSize": 32},
        "checkpoint": {"enabled": False},
    }
    (out / "job.json").write_text(json.dumps(spec))
    env = {**os.environ, "KAON_JOB_NAME": MODEL}
    command = ["-m", "kaon_kernels.train", "--spec", str(out / "job.json")]
    subprocess.run(
        [sys.executable, *command, "--output", str(out / "model")],
        check=True,
        env=env,
        stdout=subprocess.DEVNULL,
    )


def digits() -> list[list[float]]:
    """256 of the data set's digits, each 64 floats."""
    from sklearn.datasets import load_digits  # type: ignore[import-untyped]  # noqa: PLC0415

    return [[float(v) for v in image.reshape(-1)] for image in load_digits().images[:256]]


def json_doc(digit: list[float]) -> bytes:
    tensor = {"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": digit}
    return json.dumps({"inputs": [tensor]}).encode()


def binary_doc(digit: list[float]) -> tuple[bytes, int]:
    """(body, JSON header length): the binary tensor extension, binary output asked."""
    raw = struct.pack(f"<{len(digit)}f", *digit)
    tensor = {
        "name": "input",
        "shape": [1, 1, 8, 8],
        "datatype": "FP32",
        "parameters": {"binary_data_size": len(raw)},
    }
    header = json.dumps({"inputs": [tensor], "parameters": {"binary_data_output": True}}).encode()
    return header + raw, len(header)


def request_bodies(images: Sequence[list[float]] | None = None) -> list[bytes]:
    """V2 JSON infer requests, one digit each."""
    return [http_request(INFER, json_doc(d), HOST) for d in images or digits()]


def binary_bodies(images: Sequence[list[float]]) -> list[bytes]:
    """V2 binary-tensor infer requests, one digit each."""
    requests = []
    for digit in images:
        body, length = binary_doc(digit)
        extra = ((HEADER_LENGTH, str(length)),)
        requests.append(http_request(INFER, body, HOST, "application/octet-stream", extra))
    return requests


@dataclass(frozen=True)
class Probe:
    method: str
    path: str
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()


def probes(digit: list[float]) -> list[Probe]:
    """Requests both HTTP layers must answer alike: the V2 routes the bench uses, and refusals."""
    json_body = json_doc(digit)
    binary, length = binary_doc(digit)
    as_json = (("Content-Type", "application/json"),)
    return [
        Probe("GET", "/v2/health/live"),
        Probe("GET", "/v2/health/ready"),
        Probe("GET", f"/v2/models/{MODEL}/ready"),
        Probe("GET", f"/v2/models/{MODEL}"),
        Probe("POST", INFER, json_body, as_json),
        Probe("POST", INFER + "?trace=1", json_body, as_json),
        Probe(
            "POST",
            INFER,
            binary,
            (("Content-Type", "application/octet-stream"), (HEADER_LENGTH, str(length))),
        ),
        Probe("POST", INFER, gzip.compress(json_body), (*as_json, ("Content-Encoding", "gzip"))),
        Probe("POST", INFER, b'{"inputs": [', as_json),
        Probe("POST", INFER, json_body, (*as_json, (HEADER_LENGTH, "x"))),
        Probe("POST", INFER, json_body, (*as_json, ("Content-Encoding", "br"))),
        Probe("GET", INFER),
        Probe("GET", "/v2/models/other/ready"),
        Probe("GET", "/nowhere"),
    ]


Answered = tuple[int, str | None, str | None, str | None, bytes]


def ask(port: int, probe: Probe) -> Answered:
    conn = http.client.HTTPConnection(HOST, port, timeout=10.0)
    try:
        conn.request(probe.method, probe.path, probe.body or None, dict(probe.headers))
        resp = conn.getresponse()
        body = resp.read()
        ctype, length, allow = (resp.getheader(n) for n in ("Content-Type", HEADER_LENGTH, "Allow"))
        return resp.status, ctype, length, allow, without_id(body, length)
    finally:
        conn.close()


def without_id(body: bytes, header_length: str | None) -> bytes:
    """The answer with its server-made request id blanked (a per-process prefix and count)."""
    split = int(header_length) if header_length else len(body)
    try:
        doc = json.loads(body[:split])
    except ValueError:
        return body
    if isinstance(doc, dict) and "id" in doc:
        doc["id"] = "-"
    return json.dumps(doc, sort_keys=True).encode() + body[split:]


class SameAnswers:
    """Checks that every server answers the probes as the first one checked did."""

    def __init__(self, requests: list[Probe]) -> None:
        self.requests = requests
        self.reference: list[Answered] | None = None

    def __call__(self, port: int) -> None:
        answers = [ask(port, probe) for probe in self.requests]
        if self.reference is None:
            self.reference = answers
            return
        for probe, want, got in zip(self.requests, self.reference, answers, strict=True):
            if want != got:
                raise RuntimeError(f"{probe.method} {probe.path}: {got!r}, expected {want!r}")


def ready(port: int) -> bool:
    try:
        conn = http.client.HTTPConnection(HOST, port, timeout=1.0)
        conn.request("GET", "/v2/health/ready")
        ok = conn.getresponse().status == 200
        conn.close()
        return ok
    except OSError:
        return False


def start(
    command: Spawn, model_dir: Path, is_ready: Callable[[int], bool] = ready
) -> tuple[subprocess.Popen[bytes], int, float]:
    """(process, port, seconds from spawn to ready)."""
    port = free_port()
    began = time.perf_counter()
    proc = subprocess.Popen(
        command(model_dir, port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    while not is_ready(port):
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: {command(model_dir, port)}")
        if time.perf_counter() - began > READY_TIMEOUT_S:
            proc.kill()
            raise RuntimeError("server not ready in time")
        time.sleep(0.01)
    return proc, port, time.perf_counter() - began


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


Loads = dict[str, list[bytes]]  # figure prefix ("" or "binary.") -> the requests to cycle


def measure(
    command: Spawn,
    model_dir: Path,
    loads: Loads,
    warmup_s: float,
    duration_s: float,
    cold_starts: int = 3,
    check: Callable[[int], None] | None = None,
    grpc_images: Sequence[list[float]] | None = None,
    concurrency: Sequence[int] = CONCURRENCY,
) -> dict[str, float]:
    """One round: `cold_starts` starts (the last one then serves the load points)."""
    colds = []
    for _ in range(cold_starts - 1):
        proc, _port, cold = start(command, model_dir)
        colds.append(cold)
        stop(proc)
    proc, port, cold = start(command, model_dir)
    colds.append(cold)
    figures = {"cold_start_s": statistics.median(colds)}
    print(f"  cold start {figures['cold_start_s']:.2f} s (median of {len(colds)})", flush=True)
    try:
        if check is not None:
            check(port)
        for prefix, bodies in loads.items():
            for users in concurrency:
                tally = asyncio.run(closed_loop(HOST, port, bodies, users, warmup_s, duration_s))
                if tally.errors:
                    raise RuntimeError(f"{tally.errors} failed answers, first: {tally.first_error}")
                lat = sorted(tally.latencies)
                key = f"{prefix}c{users}"
                figures[f"{key}.rps"] = len(lat) / duration_s
                figures[f"{key}.p50_ms"] = percentile(lat, 0.50) * 1000
                figures[f"{key}.p99_ms"] = percentile(lat, 0.99) * 1000
                rps, p50, p99 = (figures[f"{key}.{k}"] for k in ("rps", "p50_ms", "p99_ms"))
                print(f"  {key}: {rps:.0f} req/s, p50 {p50:.2f} ms, p99 {p99:.2f} ms", flush=True)
        if grpc_images is not None:
            try:
                figures |= measure_grpc(GRPC_PORTS[port], grpc_images, warmup_s, duration_s)
            except RuntimeError as err:  # reported; the HTTP figures still count
                print(f"  gRPC: not measured: {err}", flush=True)
    finally:
        stop(proc)
    return figures


async def grpc_closed_loop(
    port: int, images: Sequence[list[float]], users: int, warmup_s: float, duration_s: float
) -> Tally:
    """loadgen.closed_loop's gRPC twin: `users` callers, each a ModelInfer of one raw digit at a
    time, on GRPC_CHANNELS channels; answers inside the measured window are tallied."""
    import grpc  # noqa: PLC0415

    from kaon_kernels.serve import grpc_predict_v2_pb2 as pb  # noqa: PLC0415

    requests = []
    for digit in images:
        req = pb.ModelInferRequest(model_name=MODEL)
        req.inputs.add(name="input", datatype="FP32", shape=[1, 1, 8, 8])
        req.raw_input_contents.append(struct.pack(f"<{len(digit)}f", *digit))
        requests.append(req)
    channels = [grpc.aio.insecure_channel(f"{HOST}:{port}") for _ in range(GRPC_CHANNELS)]
    method = "/inference.GRPCInferenceService/ModelInfer"
    calls = [
        c.unary_unary(
            method,
            request_serializer=pb.ModelInferRequest.SerializeToString,
            response_deserializer=pb.ModelInferResponse.FromString,
        )
        for c in channels
    ]
    begin = time.perf_counter()
    tally = Tally(start=begin + warmup_s, end=begin + warmup_s + duration_s)

    async def user(i: int) -> None:
        call, n = calls[i % len(calls)], i * 7
        while True:
            sent = time.perf_counter()
            if sent >= tally.end:
                return
            try:
                await call(requests[n % len(requests)], timeout=30)
            except grpc.aio.AioRpcError as err:
                tally.errors += 1
                tally.first_error = tally.first_error or f"{err.code()}: {err.details()}"
            else:
                done = time.perf_counter()
                if tally.start <= sent and done <= tally.end:
                    tally.latencies.append(done - sent)
            n += 1

    await asyncio.gather(*(user(i) for i in range(users)))
    for channel in channels:
        await channel.close()
    return tally


def measure_grpc(
    port: int, images: Sequence[list[float]], warmup_s: float, duration_s: float
) -> dict[str, float]:
    tally = asyncio.run(grpc_closed_loop(port, images, GRPC_USERS, warmup_s, duration_s))
    if tally.errors:
        raise RuntimeError(f"gRPC: {tally.errors} failed calls, first: {tally.first_error}")
    lat = sorted(tally.latencies)
    key = f"grpc.c{GRPC_USERS}"
    figures = {
        f"{key}.rps": len(lat) / duration_s,
        f"{key}.p50_ms": percentile(lat, 0.50) * 1000,
        f"{key}.p99_ms": percentile(lat, 0.99) * 1000,
    }
    rps, p50, p99 = (figures[f"{key}.{k}"] for k in ("rps", "p50_ms", "p99_ms"))
    print(f"  {key}: {rps:.0f} req/s, p50 {p50:.2f} ms, p99 {p99:.2f} ms", flush=True)
    return figures


def best(rounds: list[dict[str, float]]) -> dict[str, float]:
    """Each figure's best round: the one least disturbed by other load on a shared machine."""
    return {key: (max if key.endswith("rps") else min)(r[key] for r in rounds) for key in rounds[0]}


UNITS = {"rps": "req/s", "p50_ms": "ms", "p99_ms": "ms", "cold_start_s": "s"}


def compare(
    prefix: str, ours: dict[str, float], base: dict[str, float], keys: list[str]
) -> dict[str, dict[str, Any]]:
    entries: dict[str, dict[str, Any]] = {}
    for key in keys:
        name = f"{prefix}.{key}"
        entries[name] = record(name, ours[key], UNITS[key.rsplit(".", 1)[-1]], base[key])
    return entries


def load_arguments(description: str) -> argparse.ArgumentParser:
    """The load flags of the serving benches: --duration, --warmup, --rounds, --quick."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--duration", type=float, default=8.0, help="measured seconds per point")
    parser.add_argument("--warmup", type=float, default=2.0, help="warm-up seconds per point")
    parser.add_argument("--rounds", type=int, default=2, help="rounds per server, alternating")
    parser.add_argument("--quick", action="store_true", help="1 round of 3 s points")
    return parser


def parsed(parser: argparse.ArgumentParser) -> argparse.Namespace:
    args = parser.parse_args()
    if args.quick:
        args.duration, args.warmup, args.rounds = 3.0, 1.0, 1
    return args


def main() -> int:
    parser = load_arguments(__doc__.split("\n\n")[0])
    parser.add_argument(
        "--http-layer-only", action="store_true", help="only own HTTP layer vs aiohttp.web"
    )
    parser.add_argument(
        "--aiohttp-flavor",
        choices=("server", "application"),
        default="server",
        help="aiohttp's low-level web.Server (default) or a web.Application",
    )
    args = parsed(parser)
    if not args.http_layer_only and not KSERVE_PY.is_file():
        print(f"no KServe venv at {KSERVE_PY.relative_to(REPO)}: run `make setup`", file=sys.stderr)
        return 2
    servers: dict[str, Spawn] = {"kaon": kaon_grpc_command}
    if not args.http_layer_only:
        servers["kserve"] = kserve_command
    servers["aiohttp"] = aiohttp_command(args.aiohttp_flavor)
    if not args.http_layer_only:
        servers["kaon-asyncio"] = kaon_asyncio_command
    with tempfile.TemporaryDirectory(prefix="kaon-serving-bench-") as tmp:
        train_artifact(Path(tmp))
        model_dir = Path(tmp) / "model"
        images = digits()
        json_load = {"": request_bodies(images)}
        both_loads = {**json_load, "binary.": binary_bodies(images)}
        same = SameAnswers(probes(images[0]))
        rounds: dict[str, list[dict[str, float]]] = {name: [] for name in servers}
        for i in range(args.rounds):
            order = list(servers)
            if args.http_layer_only and i % 2:
                order.reverse()  # neither layer always runs first
            for name in order:
                print(f"{name}, round {i + 1}:", flush=True)
                http = name != "kserve"
                if name == "kaon-asyncio":  # the event loop's figure: JSON at c32 only
                    rounds[name].append(
                        measure(
                            servers[name],
                            model_dir,
                            json_load,
                            args.warmup,
                            args.duration,
                            cold_starts=1,
                            concurrency=(32,),
                        )
                    )
                    continue
                rounds[name].append(
                    measure(
                        servers[name],
                        model_dir,
                        both_loads if http else json_load,
                        args.warmup,
                        args.duration,
                        cold_starts=1 if args.http_layer_only or name == "aiohttp" else 3,
                        check=same if http else None,
                        grpc_images=images if name in ("kaon", "kserve") else None,
                    )
                )
    ours = best(rounds["kaon"])
    entries: dict[str, dict[str, Any]] = {}
    if not args.http_layer_only:
        kserve = best(rounds["kserve"])
        entries |= compare("serving", ours, kserve, [k for k in kserve if k[:5] != "grpc."])
        ours_grpc = {k[5:]: v for k, v in ours.items() if k.startswith("grpc.")}
        kserve_grpc = {k[5:]: v for k, v in kserve.items() if k.startswith("grpc.")}
        entries |= compare("serving.grpc_vs_kserve", ours_grpc, kserve_grpc, list(kserve_grpc))
    grpc_c = f"c{GRPC_USERS}"
    http_c = {f"grpc.{grpc_c}.{k}": ours[f"{grpc_c}.{k}"] for k in ("rps", "p50_ms", "p99_ms")}
    entries |= compare("serving", ours, http_c, list(http_c))
    aiohttp = best(rounds["aiohttp"])
    layer_keys = [key for key in aiohttp if key != "cold_start_s"]
    entries |= compare("serving.http_layer", ours, aiohttp, layer_keys)
    if "kaon-asyncio" in rounds:
        on_asyncio = best(rounds["kaon-asyncio"])
        loop_keys = [f"c32.{k}" for k in ("rps", "p50_ms", "p99_ms")]
        entries |= compare("serving.event_loop", ours, on_asyncio, loop_keys)
    print(table(entries))
    return 0


if __name__ == "__main__":
    sys.exit(main())
