"""Serving with TLS and bearer tokens on against off: kaon's V2 server, and KServe's ModelServer
(plain HTTP, as it serves without a mesh), same model, same load, same run.

kaon runs twice: plain, and with `--tls-cert-file/--tls-key-file` (a certificate made for the
run) and `--auth-tokens-dir` (one token): every request then goes over a TLS connection with
`Authorization: Bearer`. The closed-loop generator (loadgen.py) drives each at concurrency 32
with V2 JSON infer requests of one digit each; the servers alternate for `--rounds` rounds and
each figure keeps its best round (as serving.py does).

Figures:
- `serving.secured.c32.{rps,p50_ms,p99_ms}`: kaon with TLS and auth on, baseline kaon plain
  (the cost of security);
- `serving.secured_vs_kserve.c32.{rps,p50_ms,p99_ms}`: kaon with TLS and auth on, baseline
  KServe's ModelServer plain (targets: rps ratio >= 5, p99 ratio <= 0.25).

A ServiceAccount token checked with TokenReview costs one review per token per minute and then
the same cache lookup, so the static token stands for both here.

Run: `.venv/bin/python tests/bench/secured.py [--duration S] [--rounds N] [--quick]`.
"""

from __future__ import annotations

import asyncio
import ssl
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from loadgen import closed_loop, http_request, percentile
from results import record, table
from serving import (
    HOST,
    INFER,
    KSERVE_PY,
    REPO,
    Spawn,
    best,
    digits,
    json_doc,
    kaon_command,
    kserve_command,
    load_arguments,
    parsed,
    ready,
    start,
    stop,
    train_artifact,
)

sys.path.insert(0, str(REPO / "tests"))
from tlskit import Issued, issue

USERS = 32
TOKEN = "bench-token-5f1d2c9e0b7a4e63"
UNITS = {"rps": "req/s", "p50_ms": "ms", "p99_ms": "ms"}


def secured_command(issued: Issued, tokens: Path) -> Spawn:
    def command(model_dir: Path, port: int) -> list[str]:
        return [
            *kaon_command(model_dir, port),
            "--tls-cert-file",
            str(issued.cert),
            "--tls-key-file",
            str(issued.key),
            "--auth-tokens-dir",
            str(tokens),
        ]

    return command


def client_tls(issued: Issued) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(issued.ca))
    context.check_hostname = False  # 127.0.0.1; the chain is verified
    return context


def ready_tls(port: int, context: ssl.SSLContext) -> bool:
    opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=context))
    try:
        with opener.open(f"https://{HOST}:{port}/v2/health/ready", timeout=1.0) as answer:
            return bool(answer.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def measure(
    command: Spawn,
    model_dir: Path,
    bodies: list[bytes],
    tls: ssl.SSLContext | None,
    warmup_s: float,
    duration_s: float,
) -> dict[str, float]:
    proc, port, _ = start(command, model_dir, (lambda p: ready_tls(p, tls)) if tls else ready)
    try:
        tally = asyncio.run(closed_loop(HOST, port, bodies, USERS, warmup_s, duration_s, tls))
    finally:
        stop(proc)
    if tally.errors:
        raise RuntimeError(f"{tally.errors} failed answers, first: {tally.first_error}")
    lat = sorted(tally.latencies)
    figures = {
        "rps": len(lat) / duration_s,
        "p50_ms": percentile(lat, 0.50) * 1000,
        "p99_ms": percentile(lat, 0.99) * 1000,
    }
    print(
        f"  c{USERS}: {figures['rps']:.0f} req/s, p50 {figures['p50_ms']:.2f} ms, "
        f"p99 {figures['p99_ms']:.2f} ms",
        flush=True,
    )
    return figures


def main() -> int:
    args = parsed(load_arguments(__doc__.split("\n\n")[0]))
    if not KSERVE_PY.is_file():
        print(f"no KServe venv at {KSERVE_PY.relative_to(REPO)}: run `make setup`", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="kaon-secured-bench-") as tmp:
        work = Path(tmp)
        train_artifact(work)
        issued = issue(work / "tls", ["digits.bench.svc"], (HOST,))
        tokens = work / "tokens"
        tokens.mkdir()
        (tokens / "bench").write_text(TOKEN)
        tls = client_tls(issued)
        images = digits()
        plain = [http_request(INFER, json_doc(d), HOST) for d in images]
        bearer = (("Authorization", f"Bearer {TOKEN}"),)
        secured = [http_request(INFER, json_doc(d), HOST, headers=bearer) for d in images]
        runs: dict[str, tuple[Spawn, list[bytes], ssl.SSLContext | None]] = {
            "kaon": (kaon_command, plain, None),
            "kaon-secured": (secured_command(issued, tokens), secured, tls),
            "kserve": (kserve_command, plain, None),
        }
        rounds: dict[str, list[dict[str, float]]] = {name: [] for name in runs}
        for i in range(args.rounds):
            for name, (command, bodies, context) in runs.items():
                print(f"{name}, round {i + 1}:", flush=True)
                rounds[name].append(
                    measure(command, work / "model", bodies, context, args.warmup, args.duration)
                )
    found = {name: best(r) for name, r in rounds.items()}
    entries: dict[str, dict[str, Any]] = {}
    for prefix, base in (("serving.secured", "kaon"), ("serving.secured_vs_kserve", "kserve")):
        for key, unit in UNITS.items():
            name = f"{prefix}.c{USERS}.{key}"
            entries[name] = record(name, found["kaon-secured"][key], unit, found[base][key])
    print(table(entries))
    return 0


if __name__ == "__main__":
    sys.exit(main())
