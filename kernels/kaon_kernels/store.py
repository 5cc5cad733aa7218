"""Where checkpoints and the final model go: a local directory, or an S3 prefix every member
cluster can read.

On S3 a commit is two writes: the checkpoint object under the attempt's own prefix, then the
prefix's `manifest.json`, which names the newest committed checkpoint. A reader only ever
follows the manifest, so a half-written object is never resumed from. The manifest is the fence
between attempts of a job (`KAON_ATTEMPT`, one per placement): a worker commits only while the
manifest's attempt is not newer than its own, with a conditional write (If-Match the ETag it
read, If-None-Match for the first), so a worker of an attempt that was failed over cannot commit
a checkpoint or the model after the new attempt has.
"""

from __future__ import annotations

import io
import json
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

import torch

from kaon_kernels.checkpoint import load_latest, write_checkpoint

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "kaon-manifest/v1"
KEEP = 2  # committed checkpoints kept per attempt: the newest and the one before


class FencedOffError(Exception):
    """A newer attempt of the job owns the store: this worker must stop without writing."""


class CheckpointStore(Protocol):
    def save(self, step: int, state: dict[str, Any]) -> None: ...

    def latest(self) -> dict[str, Any] | None: ...

    def publish(self, directory: Path) -> str:
        """Commit the model written to `directory`; where servers read it from."""
        ...


@dataclass
class LocalStore:
    """A directory on the node or on a claim (single cluster): no fencing beyond the pod's."""

    directory: Path

    def save(self, step: int, state: dict[str, Any]) -> None:
        write_checkpoint(self.directory, step, state)

    def latest(self) -> dict[str, Any] | None:
        return load_latest(self.directory)

    def publish(self, directory: Path) -> str:
        return str(directory.resolve())


def split_uri(uri: str) -> tuple[str, str]:
    """s3://bucket/some/prefix -> (bucket, "some/prefix")."""
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ValueError(f"{uri!r} is not an s3://bucket/prefix URI")
    return parsed.netloc, parsed.path.strip("/")


def s3_client(env: Mapping[str, str]) -> Any:
    """boto3's S3 client from the standard AWS_* variables (AWS_ENDPOINT_URL_S3 for servers
    other than AWS), with path-style addressing, which every S3-compatible server accepts."""
    import boto3  # noqa: PLC0415  (only jobs with an s3:// location need it)
    from botocore.config import Config  # noqa: PLC0415

    config = Config(
        s3={"addressing_style": "path"},
        retries={"max_attempts": 5, "mode": "standard"},
        connect_timeout=5,
        read_timeout=60,
    )
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None
    session = boto3.session.Session(
        aws_access_key_id=env.get("AWS_ACCESS_KEY_ID"),
        aws_secret_access_key=env.get("AWS_SECRET_ACCESS_KEY"),
        region_name=env.get("AWS_DEFAULT_REGION") or env.get("AWS_REGION"),
    )
    return session.client("s3", endpoint_url=endpoint, config=config)


class S3Store:
    def __init__(self, uri: str, attempt: int, client: Any) -> None:
        self.bucket, self.prefix = split_uri(uri)
        self.attempt = attempt
        self.client = client
        self._committed: list[str] = []  # our own committed checkpoint keys, oldest first

    def key(self, *parts: str) -> str:
        return "/".join(p for p in (self.prefix, *parts) if p)

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    # -- the manifest ------------------------------------------------------------------------

    def manifest(self) -> tuple[dict[str, Any] | None, str | None]:
        """The committed manifest and its ETag (None, None when nothing was committed)."""
        try:
            answer = self.client.get_object(Bucket=self.bucket, Key=self.key(MANIFEST))
        except self.client.exceptions.NoSuchKey:
            return None, None
        record: dict[str, Any] = json.loads(answer["Body"].read())
        if record.get("format") != MANIFEST_FORMAT:
            raise ValueError(f"{self.uri(self.key(MANIFEST))}: not a {MANIFEST_FORMAT} manifest")
        return record, answer["ETag"]

    def commit(self, **fields: Any) -> None:
        """Write the manifest with `fields`, if no newer attempt has committed (FencedOffError)."""
        from botocore.exceptions import ClientError  # noqa: PLC0415

        for _ in range(5):
            current, etag = self.manifest()
            if current is not None and int(current.get("attempt", -1)) > self.attempt:
                raise FencedOffError(
                    f"attempt {current['attempt']} owns {self.uri(self.key())}; "
                    f"this worker is of attempt {self.attempt}"
                )
            record = {
                **(current or {}),
                **fields,
                "format": MANIFEST_FORMAT,
                "attempt": self.attempt,
                "committedAt": time.time(),
            }
            condition = {"IfMatch": etag} if etag else {"IfNoneMatch": "*"}
            try:
                self.client.put_object(
                    Bucket=self.bucket,
                    Key=self.key(MANIFEST),
                    Body=json.dumps(record).encode(),
                    ContentType="application/json",
                    **condition,
                )
                return
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code", "")
                if code not in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
                    raise
                # Someone committed between our read and our write: look again.
        raise FencedOffError(f"{self.uri(self.key(MANIFEST))}: kept changing under this worker")

    # -- checkpoints -------------------------------------------------------------------------

    def save(self, step: int, state: dict[str, Any]) -> None:
        buffer = io.BytesIO()
        torch.save(state, buffer)
        key = self.key(f"attempt-{self.attempt}", f"step-{step:09d}.pt")
        self.client.put_object(Bucket=self.bucket, Key=key, Body=buffer.getvalue())
        self.commit(checkpoint=key, step=step)
        self._committed.append(key)
        for old in self._committed[:-KEEP]:
            self.client.delete_object(Bucket=self.bucket, Key=old)
        self._committed = self._committed[-KEEP:]

    def latest(self) -> dict[str, Any] | None:
        """The newest committed checkpoint, after claiming the store for this attempt: from
        here on a worker of an older attempt (still running somewhere) commits nothing."""
        record, _ = self.manifest()
        owner = -1 if record is None else int(record.get("attempt", -1))
        if owner > self.attempt:
            raise FencedOffError(f"attempt {owner} owns {self.uri(self.key())}")
        if owner < self.attempt:
            self.commit()
            record, _ = self.manifest()
        if record is None or not record.get("checkpoint"):
            return None
        key = str(record["checkpoint"])
        answer = self.client.get_object(Bucket=self.bucket, Key=key)
        state: dict[str, Any] = torch.load(
            io.BytesIO(answer["Body"].read()), map_location="cpu", weights_only=True
        )
        print(f"kaon: resuming from {self.uri(key)}", file=sys.stderr)
        return state

    def publish(self, directory: Path) -> str:
        """Upload the model's files under the attempt's prefix, then commit them."""
        prefix = self.key(f"attempt-{self.attempt}", "model")
        for path in sorted([*directory.glob("model.*"), *directory.glob("reference.json")]):
            self.client.upload_file(str(path), self.bucket, f"{prefix}/{path.name}")
        self.commit(artifact=prefix)
        return self.uri(prefix)


def store_for(
    checkpoint_dir: Path, uri: str | None, attempt: int, env: Mapping[str, str]
) -> CheckpointStore:
    if uri:
        return S3Store(uri, attempt, s3_client(env))
    return LocalStore(checkpoint_dir)
