"""A model kept in an S3 store (`--model-uri s3://...`): its model.pt and model.json (and
reference.json, where the artifact has one: the drift reference) are downloaded into the model
directory before the server loads it from there."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kaon_kernels.serve.settings import SettingsError

ARTIFACT_FILES = ("model.json", "model.pt")
OPTIONAL_FILES = ("reference.json",)  # artifacts from before drift references have none
_MISSING = {"404", "NoSuchKey", "NoSuchBucket", "NotFound"}
_DENIED = {"403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "Forbidden"}


def _why(error: dict[str, Any]) -> str:
    code = str(error.get("Code", ""))
    if code in _MISSING:
        return "no such key (not a kaon model artifact prefix?)"
    if code in _DENIED:
        return "access denied (check the credentials of the store Secret)"
    return f"{code}: {error.get('Message', '')}".strip(": ")


def fetch_model(uri: str, directory: Path, env: Mapping[str, str]) -> None:
    """Download the artifact at `uri` into `directory`, each file complete or not at all;
    SettingsError naming the object that could not be read and why."""
    from botocore.exceptions import BotoCoreError, ClientError  # noqa: PLC0415

    from kaon_kernels.store import s3_client, split_uri  # noqa: PLC0415  (loads torch)

    try:
        bucket, prefix = split_uri(uri)
    except ValueError as err:
        raise SettingsError(str(err)) from None
    client = s3_client(env)
    directory.mkdir(parents=True, exist_ok=True)
    for name in (*ARTIFACT_FILES, *OPTIONAL_FILES):
        key = f"{prefix}/{name}" if prefix else name
        where = f"s3://{bucket}/{key}"
        part = directory / f".{name}.part"
        try:
            client.download_file(bucket, key, str(part))
        except ClientError as err:
            error = err.response.get("Error", {})
            if name in OPTIONAL_FILES and str(error.get("Code", "")) in _MISSING:
                continue
            raise SettingsError(f"{where}: {_why(error)}") from None
        except (BotoCoreError, OSError) as err:
            raise SettingsError(f"{where}: {err}") from None
        part.replace(directory / name)
