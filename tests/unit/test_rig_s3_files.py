"""The rig's S3 server, without starting it: its key pair, identities and command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kaon_rig import paths, s3


@pytest.fixture(autouse=True)
def rig_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setenv("KAON_RIG_DIR", str(tmp_path / "rig"))
    return tmp_path / "rig"


def test_the_key_pair_is_made_once_per_rig_and_kept_private(rig_dir: Path) -> None:
    assert s3.saved_credentials() is None
    first = s3.credentials()
    assert s3.credentials() == first == s3.saved_credentials()
    assert (rig_dir / "s3" / s3.CREDENTIALS_FILE).stat().st_mode & 0o077 == 0
    (rig_dir / "s3" / s3.CREDENTIALS_FILE).unlink()  # what `kaon rig down` does, with the rest
    assert s3.credentials() != first


def test_the_server_authenticates_only_the_rigs_key_pair_and_phones_nowhere() -> None:
    creds = s3.credentials()
    argv = s3.command(creds)
    config = next(a.split("=", 1)[1] for a in argv if a.startswith("-s3.config="))
    identities = json.loads(Path(config).read_text())["identities"]
    assert [i["credentials"] for i in identities] == [
        [{"accessKey": creds.access_key_id, "secretKey": creds.secret_access_key}]
    ]
    assert "-master.telemetry=false" in argv
    assert f"-ip.bind={s3.HOST}" in argv and f"-s3.port={s3.PORT}" in argv
    assert f"-dir={paths.s3_dir() / 'data'}" in argv


def test_the_secret_has_the_shape_jobs_reference() -> None:
    assert (s3.SECRET_NAMESPACE, s3.SECRET_NAME) == ("default", "kaon-s3")
    assert s3.secret_data() == {
        "endpoint": "http://127.0.0.1:8333",
        "region": "us-east-1",
        "accessKeyId": s3.credentials().access_key_id,
        "secretAccessKey": s3.credentials().secret_access_key,
    }
