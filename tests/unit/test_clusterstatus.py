"""Which ComputeCluster statuses the operator writes: only changed ones, per object (uid)."""

from __future__ import annotations

from kaon.api.computecluster import ComputeClusterSpec
from kaon.controllers.computecluster import Published
from kaon.engine.fleet import Registered

SPEC = ComputeClusterSpec.model_validate(
    {
        "kubeconfigSecretRef": {"name": "gone", "namespace": "kaon-system"},
        "pools": [{"name": "cpu", "nodeSelector": {"kaon.dev/pool": "cpu"}}],
    }
)


def registered(uid: str) -> Registered:
    reg = Registered("west", SPEC, {}, body={"metadata": {"name": "west", "uid": uid}})
    reg.problem = ("SecretNotFound", "Secret kaon-system/gone does not exist")
    return reg


def test_an_unchanged_status_is_written_once() -> None:
    published = Published()
    reg = registered("uid-1")
    ((same, status),) = published.changed([reg], {"west": 1}, "2026-11-23T00:00:00Z")
    assert same is reg and status.conditions[0].reason == "SecretNotFound"
    published.mark(reg, status)
    assert published.changed([reg], {"west": 1}, "2026-11-23T00:00:09Z") == []
    assert len(published.changed([reg], {"west": 2}, "2026-11-23T00:00:09Z")) == 1


def test_a_cluster_created_again_under_its_name_gets_its_status_written() -> None:
    published = Published()
    old = registered("uid-1")
    ((_, status),) = published.changed([old], {"west": 1}, "2026-11-23T00:00:00Z")
    published.mark(old, status)
    again = registered("uid-2")
    ((reg, _),) = published.changed([again], {"west": 1}, "2026-11-23T00:00:05Z")
    assert reg is again


def test_a_failed_write_is_tried_again() -> None:
    published = Published()
    reg = registered("uid-1")
    assert len(published.changed([reg], {}, "2026-11-23T00:00:00Z")) == 1
    assert len(published.changed([reg], {}, "2026-11-23T00:00:02Z")) == 1
