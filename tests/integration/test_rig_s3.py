"""The rig's S3 server is real: SeaweedFS with authentication on, its credentials in the hub's
Secret `kaon-s3`, reachable from a member's pod, and fencing writes with conditional PUTs."""

from __future__ import annotations

import base64
import os
import signal
import textwrap
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import boto3
import pytest
from botocore import UNSIGNED
from botocore.config import Config
from botocore.exceptions import ClientError

from kaon_rig import s3
from kaon_rig.agent import AGENT_LABEL
from kaon_rig.config import POOL_LABEL

from kaonrig import Rig, wait_for

SECRET_KEYS = {"endpoint", "region", "accessKeyId", "secretAccessKey"}
AGENT_MEMBER = "west"


def read_secret(kaon_rig: Rig) -> dict[str, str]:
    found = kaon_rig.core("hub").read_namespaced_secret(s3.SECRET_NAME, s3.SECRET_NAMESPACE)
    return {k: base64.b64decode(v).decode() for k, v in (found.data or {}).items()}


def s3_client(secret: dict[str, str], **overrides: Any) -> Any:
    options: dict[str, Any] = {
        "endpoint_url": secret["endpoint"],
        "region_name": secret["region"],
        "aws_access_key_id": secret["accessKeyId"],
        "aws_secret_access_key": secret["secretAccessKey"],
        "config": Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
    }
    return boto3.client("s3", **(options | overrides))


def error_code(exc: ClientError) -> tuple[int, str]:
    return exc.response["ResponseMetadata"]["HTTPStatusCode"], exc.response["Error"]["Code"]


@pytest.fixture(scope="module")
def secret(kaon_rig: Rig) -> dict[str, str]:
    return read_secret(kaon_rig)


@pytest.fixture
def bucket(secret: dict[str, str]) -> Iterator[tuple[Any, str]]:
    """A client of the Secret's credentials and a key prefix of this test, emptied afterwards."""
    s3c = s3_client(secret)
    prefix = f"test-{uuid.uuid4().hex[:8]}/"
    yield s3c, prefix
    listed = s3c.list_objects_v2(Bucket=s3.BUCKET, Prefix=prefix).get("Contents", [])
    for obj in listed:
        s3c.delete_object(Bucket=s3.BUCKET, Key=obj["Key"])


def test_the_secret_names_a_loopback_endpoint_and_a_key_pair(secret: dict[str, str]) -> None:
    assert set(secret) == SECRET_KEYS
    assert secret["endpoint"] == f"http://127.0.0.1:{s3.PORT}"
    assert secret["region"] == "us-east-1"
    assert len(secret["accessKeyId"]) >= 16 and len(secret["secretAccessKey"]) >= 32


def test_an_object_is_written_listed_read_and_deleted(bucket: tuple[Any, str]) -> None:
    s3c, prefix = bucket
    key = f"{prefix}checkpoints/step-1/model.bin"
    body = bytes(range(256)) * 4096  # 1 MiB
    put = s3c.put_object(Bucket=s3.BUCKET, Key=key, Body=body)
    listed = s3c.list_objects_v2(Bucket=s3.BUCKET, Prefix=prefix)["Contents"]
    assert [(o["Key"], o["Size"]) for o in listed] == [(key, len(body))]
    got = s3c.get_object(Bucket=s3.BUCKET, Key=key)
    assert got["Body"].read() == body
    assert got["ETag"] == put["ETag"]
    s3c.delete_object(Bucket=s3.BUCKET, Key=key)
    assert "Contents" not in s3c.list_objects_v2(Bucket=s3.BUCKET, Prefix=prefix)
    with pytest.raises(ClientError) as missing:
        s3c.head_object(Bucket=s3.BUCKET, Key=key)
    assert error_code(missing.value)[0] == 404


def test_a_wrong_secret_key_and_no_signature_are_refused(
    secret: dict[str, str], bucket: tuple[Any, str]
) -> None:
    s3c, prefix = bucket
    key = f"{prefix}private"
    s3c.put_object(Bucket=s3.BUCKET, Key=key, Body=b"secret")
    wrong = s3_client(secret, aws_secret_access_key=secret["secretAccessKey"][::-1])
    with pytest.raises(ClientError) as refused:
        wrong.get_object(Bucket=s3.BUCKET, Key=key)
    assert error_code(refused.value) == (403, "SignatureDoesNotMatch")
    with pytest.raises(ClientError) as refused_write:
        wrong.put_object(Bucket=s3.BUCKET, Key=f"{prefix}intruder", Body=b"x")
    assert error_code(refused_write.value)[0] == 403
    anonymous = s3_client(
        secret,
        aws_access_key_id=None,
        aws_secret_access_key=None,
        config=Config(signature_version=UNSIGNED, s3={"addressing_style": "path"}),
    )
    with pytest.raises(ClientError) as refused_anonymous:
        anonymous.get_object(Bucket=s3.BUCKET, Key=key)
    assert error_code(refused_anonymous.value) == (403, "AccessDenied")
    keys = [o["Key"] for o in s3c.list_objects_v2(Bucket=s3.BUCKET, Prefix=prefix)["Contents"]]
    assert keys == [key]


def test_put_if_none_match_creates_once_and_refuses_an_existing_key(
    bucket: tuple[Any, str],
) -> None:
    s3c, prefix = bucket
    key = f"{prefix}commit"
    s3c.put_object(Bucket=s3.BUCKET, Key=key, Body=b"first", IfNoneMatch="*")
    with pytest.raises(ClientError) as refused:
        s3c.put_object(Bucket=s3.BUCKET, Key=key, Body=b"second", IfNoneMatch="*")
    assert error_code(refused.value) == (412, "PreconditionFailed")
    assert s3c.get_object(Bucket=s3.BUCKET, Key=key)["Body"].read() == b"first"


@pytest.mark.parametrize("condition", ["IfNoneMatch", "IfMatch"])
def test_exactly_one_of_racing_conditional_writers_wins(
    bucket: tuple[Any, str], condition: str
) -> None:
    """Creating a key (If-None-Match: *) or replacing the version all writers read (If-Match)."""
    s3c, prefix = bucket
    key = f"{prefix}race"
    if condition == "IfNoneMatch":
        expected = "*"
    else:
        expected = s3c.put_object(Bucket=s3.BUCKET, Key=key, Body=b"base")["ETag"]
    writers = 8

    def put(i: int) -> str:
        body = f"writer-{i}"
        try:
            s3c.put_object(Bucket=s3.BUCKET, Key=key, Body=body.encode(), **{condition: expected})
            return body
        except ClientError as exc:
            assert error_code(exc) == (412, "PreconditionFailed")
            return ""

    with ThreadPoolExecutor(max_workers=writers) as pool:
        winners = [w for w in pool.map(put, range(writers)) if w]
    assert len(winners) == 1
    assert s3c.get_object(Bucket=s3.BUCKET, Key=key)["Body"].read() == winners[0].encode()


def test_put_if_match_replaces_the_current_etag_and_refuses_a_stale_one(
    bucket: tuple[Any, str],
) -> None:
    s3c, prefix = bucket
    key = f"{prefix}latest"
    v1 = s3c.put_object(Bucket=s3.BUCKET, Key=key, Body=b"step-1")["ETag"]
    v2 = s3c.put_object(Bucket=s3.BUCKET, Key=key, Body=b"step-2", IfMatch=v1)["ETag"]
    assert v2 != v1
    with pytest.raises(ClientError) as stale:
        s3c.put_object(Bucket=s3.BUCKET, Key=key, Body=b"step-2-from-a-zombie", IfMatch=v1)
    assert error_code(stale.value) == (412, "PreconditionFailed")
    got = s3c.get_object(Bucket=s3.BUCKET, Key=key)
    assert (got["Body"].read(), got["ETag"]) == (b"step-2", v2)
    with pytest.raises(ClientError) as absent:
        s3c.put_object(Bucket=s3.BUCKET, Key=f"{prefix}absent", Body=b"x", IfMatch=v2)
    assert error_code(absent.value)[0] in {404, 412}


# Runs in a pod of the agent's node with the Secret's keys as its environment.
POD_WRITER = textwrap.dedent(
    """
    import os, boto3
    s3c = boto3.client(
        "s3",
        endpoint_url=os.environ["S3_ENDPOINT"],
        region_name=os.environ["S3_REGION"],
        aws_access_key_id=os.environ["S3_ACCESS_KEY_ID"],
        aws_secret_access_key=os.environ["S3_SECRET_ACCESS_KEY"],
    )
    s3c.put_object(Bucket="kaon", Key=os.environ["KEY"], Body=os.environ["POD_IP"].encode())
    """
)


def test_a_pod_of_a_member_writes_with_the_secrets_credentials(
    kaon_rig: Rig, namespace: str, secret: dict[str, str], bucket: tuple[Any, str]
) -> None:
    s3c, prefix = bucket
    key = f"{prefix}from-a-pod"
    core = kaon_rig.core(AGENT_MEMBER)
    # The Secret copied into the member, as the operator hands it to a job's pods.
    core.create_namespaced_secret(
        namespace, {"metadata": {"name": s3.SECRET_NAME}, "stringData": secret}
    )
    env = [
        {"name": f"S3_{name}", "valueFrom": {"secretKeyRef": {"name": s3.SECRET_NAME, "key": k}}}
        for name, k in (
            ("ENDPOINT", "endpoint"),
            ("REGION", "region"),
            ("ACCESS_KEY_ID", "accessKeyId"),
            ("SECRET_ACCESS_KEY", "secretAccessKey"),
        )
    ]
    env += [
        {"name": "KEY", "value": key},
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
    ]
    pool = next(p.name for p in kaon_rig.config.cluster(AGENT_MEMBER).pools if p.agent)
    pod = {
        "metadata": {"name": "s3-writer"},
        "spec": {
            "restartPolicy": "Never",
            "nodeSelector": {POOL_LABEL: pool},
            "tolerations": [
                {"key": AGENT_LABEL, "operator": "Equal", "value": "true", "effect": "NoSchedule"}
            ],
            "containers": [
                {
                    "name": "main",
                    "image": "kaon/runtime:test",
                    "command": ["python", "-c", POD_WRITER],
                    "env": env,
                }
            ],
        },
    }
    core.create_namespaced_pod(namespace, pod)
    done = wait_for(
        lambda: core.read_namespaced_pod("s3-writer", namespace),
        lambda p: p.status.phase in {"Succeeded", "Failed"},
        "the writer pod finished",
        timeout_s=120,
    )
    assert done.status.phase == "Succeeded", done.status.container_statuses
    written = s3c.get_object(Bucket=s3.BUCKET, Key=key)["Body"].read().decode()
    assert written == done.status.pod_ip


def test_up_reuses_a_running_server_and_restarts_a_dead_one_with_its_data(
    bucket: tuple[Any, str],
) -> None:
    s3c, prefix = bucket
    key = f"{prefix}survivor"
    s3c.put_object(Bucket=s3.BUCKET, Key=key, Body=b"kept")
    running = s3.pid()
    assert running is not None
    assert s3.ensure() == "reused" and s3.pid() == running
    os.kill(running, signal.SIGKILL)
    wait_for(s3.pid, lambda p: p is None, "the killed server gone", timeout_s=10)
    assert not s3.is_ready()
    assert s3.ensure() == "started"
    assert s3.pid() not in {None, running}
    assert s3c.get_object(Bucket=s3.BUCKET, Key=key)["Body"].read() == b"kept"
