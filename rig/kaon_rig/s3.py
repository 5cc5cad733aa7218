"""The rig's S3 server: one SeaweedFS (`weed mini`) on this machine, shared by every member.

Pods of the process agents are processes of this machine, so they reach it on the loopback
address. Authentication is on: one key pair per rig, generated on the first `up` and kept in the
rig's directory (so `down` forgets it), handed to workloads in the hub's Secret `kaon-s3`.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kaon_rig import paths

HOST = "127.0.0.1"
PORT = 8333
# weed mini's internal servers, pinned so they fail loudly instead of moving when taken; the
# filer answers, without credentials and on loopback only, whether the bucket exists yet.
FILER_PORT = 8888
MASTER_PORT = 9333
VOLUME_PORT = 9340
ENDPOINT = f"http://{HOST}:{PORT}"
REGION = "us-east-1"
BUCKET = "kaon"
SECRET_NAME = "kaon-s3"
SECRET_NAMESPACE = "default"
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0

Obj = dict[str, Any]

PID_FILE = "weed.pid"
LOG_FILE = "weed.log"
CREDENTIALS_FILE = "credentials.json"
IDENTITIES_FILE = "identities.json"


class S3Error(RuntimeError):
    pass


@dataclass(frozen=True)
class Credentials:
    access_key_id: str
    secret_access_key: str


def credentials() -> Credentials:
    """The rig's key pair, made on first use."""
    path = paths.s3_dir() / CREDENTIALS_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        creds = {
            "accessKeyId": "KAON" + secrets.token_hex(8).upper(),
            "secretAccessKey": secrets.token_urlsafe(30),
        }
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(creds))
        tmp.chmod(0o600)
        os.replace(tmp, path)
    data = json.loads(path.read_text())
    return Credentials(data["accessKeyId"], data["secretAccessKey"])


def saved_credentials() -> Credentials | None:
    """The rig's key pair if an `up` made one."""
    return credentials() if (paths.s3_dir() / CREDENTIALS_FILE).exists() else None


def _identities_file(creds: Credentials) -> Path:
    """SeaweedFS's static identities: one admin, and no anonymous identity (so none may read)."""
    identities = {
        "identities": [
            {
                "name": "kaon-rig",
                "credentials": [
                    {"accessKey": creds.access_key_id, "secretKey": creds.secret_access_key}
                ],
                "actions": ["Admin", "Read", "List", "Tagging", "Write"],
            }
        ]
    }
    path = paths.s3_dir() / IDENTITIES_FILE
    path.write_text(json.dumps(identities, indent=2))
    path.chmod(0o600)
    return path


def command(creds: Credentials) -> list[str]:
    s3_dir = paths.s3_dir()
    return [
        str(paths.seaweedfs_binary()),
        "-logtostderr",
        "mini",
        f"-dir={s3_dir / 'data'}",
        f"-ip={HOST}",
        f"-ip.bind={HOST}",
        f"-s3.port={PORT}",
        f"-filer.port={FILER_PORT}",
        f"-master.port={MASTER_PORT}",
        f"-volume.port={VOLUME_PORT}",
        f"-s3.config={_identities_file(creds)}",
        f"-bucket={BUCKET}",
        "-master.telemetry=false",
        "-webdav=false",
        "-admin.ui=false",
        "-admin.port.legacy=0",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
    ]


def pid() -> int | None:
    """The running server's pid, if its pid file names a live weed process."""
    try:
        found = int((paths.s3_dir() / PID_FILE).read_text())
        exe = os.readlink(f"/proc/{found}/exe")
    except (OSError, ValueError):
        return None
    return found if Path(exe) == paths.seaweedfs_binary().resolve() else None


_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _get(url: str, timeout: float = 2.0) -> int:
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    try:
        with _DIRECT.open(request, timeout=timeout) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def is_ready() -> bool:
    """The gateway answers and the bucket exists."""
    return (
        _get(f"{ENDPOINT}/healthz") == 200
        and _get(f"http://{HOST}:{FILER_PORT}/buckets/{BUCKET}/") == 200
    )


def start() -> str:
    """Start the server unless it runs (its data outlives a crash); returns what was done."""
    if pid() is not None:
        return "reused"
    s3_dir = paths.s3_dir()
    (s3_dir / "data").mkdir(parents=True, exist_ok=True)
    # weed adds an admin identity from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY if they are set.
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    with (s3_dir / LOG_FILE).open("ab") as log:
        proc = subprocess.Popen(
            command(credentials()),
            cwd=s3_dir,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    (s3_dir / PID_FILE).write_text(f"{proc.pid}\n")
    return "started"


def wait_ready(timeout_s: float = START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not is_ready():
        if pid() is None:
            raise S3Error(f"the S3 server exited; see {paths.s3_dir() / LOG_FILE}")
        if time.monotonic() > deadline:
            raise S3Error(f"the S3 server is not ready after {timeout_s:.0f}s; see its log")
        time.sleep(0.2)


def ensure() -> str:
    """Make the server run and answer; a running one that does not answer is restarted."""
    action = start()
    try:
        wait_ready()
    except S3Error:
        if action != "reused":
            raise
        stop()
        action = start()
        wait_ready()
    return action


def stop() -> None:
    found = pid()
    if found is None:
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(OSError):
            os.kill(found, sig)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while pid() is not None and time.monotonic() < deadline:
            time.sleep(0.1)
        if pid() is None:
            return


def secret_data() -> dict[str, str]:
    """The hub's Secret `kaon-s3`, in the shape TrainingJobs reference."""
    creds = credentials()
    return {
        "endpoint": ENDPOINT,
        "region": REGION,
        "accessKeyId": creds.access_key_id,
        "secretAccessKey": creds.secret_access_key,
    }


def committed_manifest(secret: dict[str, str], namespace: str, name: str, uid: str) -> Obj:
    """A job's checkpoint manifest in the rig's bucket, read with the Secret's keys as the
    runtime does ({} before the runtime claimed the store; no "step" before its first commit)."""
    # boto3 comes with the runtime extra only; `kaon rig` itself runs without it.
    import boto3  # noqa: PLC0415
    from botocore.config import Config  # noqa: PLC0415

    s3c = boto3.client(
        "s3",
        endpoint_url=secret["endpoint"],
        region_name=secret["region"],
        aws_access_key_id=secret["accessKeyId"],
        aws_secret_access_key=secret["secretAccessKey"],
        config=Config(s3={"addressing_style": "path"}),
    )
    key = f"checkpoints/{namespace}/{name}/{uid}/manifest.json"
    try:
        body = s3c.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    except s3c.exceptions.NoSuchKey:
        return {}
    found: Obj = json.loads(body)
    return found
