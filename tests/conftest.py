"""Session-wide fixtures: the local rig (brought up once, or reused) and a namespace per test."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from kaon.rig import rig
from kaon.rig.config import load_config

from kaonrig import Rig

MARKERS_BY_DIR = {"integration": "integration", "e2e": "e2e", "bench": "bench"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        for part in Path(str(item.fspath)).parts:
            if part in MARKERS_BY_DIR:
                item.add_marker(getattr(pytest.mark, MARKERS_BY_DIR[part]))


@pytest.fixture(scope="session")
def kaon_rig() -> Iterator[Rig]:
    """Bring the rig up once per run, or reuse a running one (left running afterwards).

    A rig this fixture started is removed at the end unless KAON_KEEP_RIG=1.
    """
    config = load_config()
    already_running = all(s.state == "running" for s in rig.status(config))
    rig.up(config)
    handle = Rig(config)
    yield handle
    for api in handle.clients.values():
        api.close()
    if not already_running and os.environ.get("KAON_KEEP_RIG") != "1":
        rig.down()


@pytest.fixture
def namespace(kaon_rig: Rig, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace of the same name in every cluster of the rig, deleted afterwards."""
    base = request.node.name.lower().replace("_", "-")[:40].strip("-")
    name = f"{base}-{uuid.uuid4().hex[:6]}"
    body = {"metadata": {"name": name, "labels": {"kaon.dev/test": "true"}}}
    for cluster in kaon_rig.names:
        kaon_rig.core(cluster).create_namespace(body)
    yield name
    for cluster in kaon_rig.names:
        kaon_rig.core(cluster).delete_namespace(name)
