"""The request log's S3 store: `put(key, body)` writes an object under `--request-log-uri`.

Its credentials are the `KAON_REQUEST_LOG_AWS_*` variables when `KAON_REQUEST_LOG_AWS_ACCESS_KEY_ID`
is set (an InferenceService's `requestLogging.secretRef`: its store may not be the model's), else
the `AWS_*` ones. The boto3 client is made at the first upload, on the request log's thread:
`kaon_kernels.store` loads torch, which the server has loaded by then.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

from kaon_kernels.serve.requestlog import Put

ENV_PREFIX = "KAON_REQUEST_LOG_"
CONTENT_TYPE = "application/gzip"


def store_env(env: Mapping[str, str]) -> dict[str, str]:
    """The AWS_* variables of the request log's store (never mixed from both sets)."""
    own = {k.removeprefix(ENV_PREFIX): v for k, v in env.items() if k.startswith(ENV_PREFIX)}
    if own.get("AWS_ACCESS_KEY_ID"):
        return {k: v for k, v in own.items() if k.startswith("AWS_")}
    return {k: v for k, v in env.items() if k.startswith("AWS_")}


def s3_put(uri: str, env: Mapping[str, str]) -> Put:
    """Uploads to the bucket of `uri`, each key under its prefix."""
    credentials = store_env(env)
    made: list[tuple[Any, str, str]] = []  # (client, bucket, prefix), once made
    lock = threading.Lock()

    def put(key: str, body: bytes) -> None:
        with lock:
            if not made:
                from kaon_kernels.store import s3_client, split_uri  # noqa: PLC0415 (torch)

                made.append((s3_client(credentials), *split_uri(uri)))
        client, bucket, prefix = made[0]
        full = f"{prefix}/{key}" if prefix else key
        client.put_object(Bucket=bucket, Key=full, Body=body, ContentType=CONTENT_TYPE)

    return put
