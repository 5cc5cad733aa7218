"""The server's settings: command-line flags, else `KAON_*` environment variables, else defaults.

| flag                   | environment                     | default  |
|------------------------|---------------------------------|----------|
| `--model-dir DIR`      | `KAON_MODEL_DIR`                | required |
| `--model-uri s3://B/P` | `KAON_MODEL_URI`                | none (DIR holds the artifact) |
| `--name NAME`          | `KAON_MODEL_NAME`               | model.json's name |
| `--host H`             | `KAON_SERVE_HOST`               | 0.0.0.0  |
| `--port P`             | `KAON_SERVE_PORT`               | 8080 (0: any free port) |
| `--grpc-port P`        | `KAON_SERVE_GRPC_PORT`          | 8001 (0: any free port; -1: no gRPC) |
| `--max-batch-size N`   | `KAON_SERVE_MAX_BATCH_SIZE`     | 32       |
| `--max-latency-ms MS`  | `KAON_SERVE_MAX_LATENCY_MS`     | 0 (batch what queued meanwhile) |
| `--max-payload-bytes B`| `KAON_SERVE_MAX_PAYLOAD_BYTES`  | 16777216 |
| `--threads N`          | `KAON_SERVE_THREADS`            | 1 (torch intra-op threads) |
| `--drain-seconds S`    | `KAON_SERVE_DRAIN_SECONDS`      | 25       |
| `--request-log-uri s3://B/P` | `KAON_REQUEST_LOG_URI`    | none (no request log) |
| `--request-log-sample-rate R` | `KAON_REQUEST_LOG_SAMPLE_RATE` | 0.01 (0: no request log) |
| `--tls-cert-file PATH` | `KAON_TLS_CERT_FILE`            | none (HTTP); with the key: HTTPS only |
| `--tls-key-file PATH`  | `KAON_TLS_KEY_FILE`             | none (given with the certificate) |
| `--auth-audience AUD`  | `KAON_AUTH_AUDIENCE`            | none (no ServiceAccount tokens) |
| `--auth-tokens-dir DIR`| `KAON_AUTH_TOKENS_DIR`          | none (no static tokens) |

With `--auth-audience` or `--auth-tokens-dir`, every request but the health probes and
`/metrics` needs a bearer token (see `auth`). The gRPC port serves the same model over the
V2 gRPC protocol (`grpc_server`), with the same TLS and tokens.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from kaon_kernels.eventloop import LOOPS


class SettingsError(ValueError):
    pass


@dataclass(frozen=True)
class Settings:
    model_dir: Path
    model_uri: str | None = None  # s3://: the artifact is downloaded into model_dir first
    name: str | None = None
    host: str = "0.0.0.0"  # a pod serves on all its interfaces
    port: int = 8080
    grpc_port: int = 8001  # Triton's; -1: no gRPC
    max_batch_size: int = 32
    max_latency_ms: float = 0.0
    max_payload_bytes: int = 16 * 1024 * 1024
    threads: int = 1
    drain_seconds: float = 25.0
    request_log_uri: str | None = None  # s3://: sampled infer requests are written there
    request_log_sample_rate: float = 0.01
    tls_cert_file: Path | None = None  # with tls_key_file: HTTPS only
    tls_key_file: Path | None = None
    auth_audience: str | None = None  # ServiceAccount tokens for it, checked by TokenReview
    auth_tokens_dir: Path | None = None  # a mounted Secret: each file holds an accepted token
    loop: str = "auto"  # the event loop: uvloop where installed ("auto"), "uvloop" or "asyncio"

    @property
    def logs_requests(self) -> bool:
        return bool(self.request_log_uri) and self.request_log_sample_rate > 0

    @property
    def tls(self) -> bool:
        return self.tls_cert_file is not None

    @property
    def auth(self) -> bool:
        return self.auth_audience is not None or self.auth_tokens_dir is not None


# flag/field -> (environment variable, type, lowest, highest, help)
_NUMBERS: dict[str, tuple[str, type[int] | type[float], float, float, str]] = {
    "port": ("KAON_SERVE_PORT", int, 0, 65535, "port to listen on (8080; 0: any free one)"),
    "grpc_port": (
        "KAON_SERVE_GRPC_PORT",
        int,
        -1,
        65535,
        "port of the V2 gRPC endpoint (8001; 0: any free one; -1: no gRPC)",
    ),
    "max_batch_size": (
        "KAON_SERVE_MAX_BATCH_SIZE",
        int,
        1,
        4096,
        "most samples in one forward pass (32)",
    ),
    "max_latency_ms": (
        "KAON_SERVE_MAX_LATENCY_MS",
        float,
        0,
        60_000,
        "longest wait for a batch to fill once a request is queued (0)",
    ),
    "max_payload_bytes": (
        "KAON_SERVE_MAX_PAYLOAD_BYTES",
        int,
        1024,
        1 << 31,
        "largest request body; larger ones get 413 (16 MiB)",
    ),
    "threads": ("KAON_SERVE_THREADS", int, 1, 256, "torch intra-op threads (1)"),
    "drain_seconds": (
        "KAON_SERVE_DRAIN_SECONDS",
        float,
        0,
        3600,
        "on SIGTERM, longest wait for requests in flight (25)",
    ),
    "request_log_sample_rate": (
        "KAON_REQUEST_LOG_SAMPLE_RATE",
        float,
        0,
        1,
        "share of answered infer requests written to --request-log-uri (0.01; 0: none)",
    ),
}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m kaon_kernels.serve",
        description="Serve a kaon model artifact over the Open Inference Protocol (V2, HTTP "
        "and gRPC).",
    )
    p.add_argument(
        "--model-dir", help="the artifact directory (model.pt, model.json); env KAON_MODEL_DIR"
    )
    p.add_argument(
        "--model-uri",
        help="s3://BUCKET/PREFIX of model.pt and model.json, downloaded into --model-dir "
        "(credentials from the AWS_* variables); env KAON_MODEL_URI",
    )
    p.add_argument("--name", help="the served model name (model.json's); env KAON_MODEL_NAME")
    p.add_argument(
        "--request-log-uri",
        help="s3://BUCKET/PREFIX to write a sample of the infer requests and their answers to, "
        "for audit (credentials from the KAON_REQUEST_LOG_AWS_* variables, else the AWS_* "
        "ones); env KAON_REQUEST_LOG_URI",
    )
    p.add_argument("--host", help="address to listen on (0.0.0.0); env KAON_SERVE_HOST")
    p.add_argument(
        "--tls-cert-file",
        help="PEM certificate (chain) to serve HTTPS with, reloaded when the file changes; "
        "needs --tls-key-file; env KAON_TLS_CERT_FILE",
    )
    p.add_argument(
        "--tls-key-file", help="PEM private key of --tls-cert-file; env KAON_TLS_KEY_FILE"
    )
    p.add_argument(
        "--auth-audience",
        help="accept Kubernetes ServiceAccount tokens issued for this audience (checked with "
        "the API server's TokenReview); env KAON_AUTH_AUDIENCE",
    )
    p.add_argument(
        "--auth-tokens-dir",
        help="accept the tokens held by the files of this directory (a mounted Secret, one "
        "token a key); env KAON_AUTH_TOKENS_DIR",
    )
    p.add_argument(
        "--loop",
        help="event loop: auto (uvloop where installed, else asyncio's), uvloop or asyncio; "
        "env KAON_SERVE_LOOP",
    )
    for field, (env, _, _low, _high, text) in _NUMBERS.items():
        p.add_argument("--" + field.replace("_", "-"), help=f"{text}; env {env}")
    return p


def parse_settings(argv: Sequence[str] | None, env: Mapping[str, str]) -> Settings:
    """Settings from flags, then the environment; SettingsError naming the bad one."""
    args = parser().parse_args(argv)
    model_dir = args.model_dir or env.get("KAON_MODEL_DIR")
    if not model_dir:
        raise SettingsError("--model-dir (or KAON_MODEL_DIR) is required")
    model_uri = args.model_uri or env.get("KAON_MODEL_URI") or None
    if model_uri is not None and not model_uri.startswith("s3://"):
        source = "--model-uri" if args.model_uri else "KAON_MODEL_URI"
        raise SettingsError(f"{source}: {model_uri!r} is not an s3://bucket/prefix URI")
    log_uri = args.request_log_uri or env.get("KAON_REQUEST_LOG_URI") or None
    if log_uri is not None and not _is_s3_uri(log_uri):
        source = "--request-log-uri" if args.request_log_uri else "KAON_REQUEST_LOG_URI"
        raise SettingsError(f"{source}: {log_uri!r} is not an s3://bucket/prefix URI")
    cert = _setting(args, env, "--tls-cert-file", "KAON_TLS_CERT_FILE")
    key = _setting(args, env, "--tls-key-file", "KAON_TLS_KEY_FILE")
    if key is not None and cert is None:
        raise SettingsError(f"{key[0]} needs --tls-cert-file (or KAON_TLS_CERT_FILE)")
    if cert is not None and key is None:
        raise SettingsError(f"{cert[0]} needs --tls-key-file (or KAON_TLS_KEY_FILE)")
    for source, path in [given for given in (cert, key) if given is not None]:
        if not Path(path).is_file():
            raise SettingsError(f"{source}: {path!r} is not a file")
    audience = _setting(args, env, "--auth-audience", "KAON_AUTH_AUDIENCE")
    tokens_dir = _setting(args, env, "--auth-tokens-dir", "KAON_AUTH_TOKENS_DIR")
    if tokens_dir is not None and not Path(tokens_dir[1]).is_dir():
        raise SettingsError(f"{tokens_dir[0]}: {tokens_dir[1]!r} is not a directory")
    loop = _setting(args, env, "--loop", "KAON_SERVE_LOOP")
    if loop is not None and loop[1] not in LOOPS:
        raise SettingsError(f"{loop[0]}: {loop[1]!r} is not one of {', '.join(LOOPS)}")
    numbers: dict[str, int | float] = {}
    for field, (var, kind, low, high, _) in _NUMBERS.items():
        flag = "--" + field.replace("_", "-")
        raw = getattr(args, field)
        source = flag if raw is not None else var
        raw = raw if raw is not None else env.get(var)
        if raw is None or raw == "":
            continue
        try:
            value = kind(raw)
        except ValueError:
            what = "an integer" if kind is int else "a number"
            raise SettingsError(f"{source}: {raw!r} is not {what}") from None
        if not low <= value <= high:
            raise SettingsError(f"{source}: {raw} is outside {low:g}..{high:g}")
        numbers[field] = value
    return Settings(
        model_dir=Path(model_dir),
        model_uri=model_uri,
        request_log_uri=log_uri,
        name=args.name or env.get("KAON_MODEL_NAME") or None,
        host=args.host or env.get("KAON_SERVE_HOST") or Settings.host,
        tls_cert_file=Path(cert[1]) if cert else None,
        tls_key_file=Path(key[1]) if key else None,
        auth_audience=audience[1] if audience else None,
        auth_tokens_dir=Path(tokens_dir[1]) if tokens_dir else None,
        loop=loop[1] if loop else Settings.loop,
        **numbers,  # type: ignore[arg-type]
    )


def _setting(
    args: argparse.Namespace, env: Mapping[str, str], flag: str, var: str
) -> tuple[str, str] | None:
    """(the flag or variable that gave it, the value) of a text setting; None if unset."""
    value = getattr(args, flag[2:].replace("-", "_"))
    if value:
        return flag, value
    value = env.get(var)
    return (var, value) if value else None


def _is_s3_uri(uri: str) -> bool:
    parsed = urlparse(uri)
    return parsed.scheme == "s3" and bool(parsed.netloc)


def artifact_name(model_dir: Path) -> str:
    """The model's name recorded in the artifact's `model.json`; SettingsError if unreadable."""
    where = model_dir / "model.json"
    try:
        info = json.loads(where.read_text())
    except (OSError, ValueError) as err:
        raise SettingsError(f"{where}: not a kaon model artifact ({err})") from None
    name = info.get("name") if isinstance(info, dict) else None
    if not isinstance(name, str) or not name:
        raise SettingsError(f"{where}: no model name")
    return name
