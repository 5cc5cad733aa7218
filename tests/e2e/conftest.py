"""Fixtures of the e2e tests: the process-agent pool, registered as a user registers it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from kaon_rig import agents

from kaonrig import REPO, Rig, kubectl, register_cluster, wait_members_ready

EXAMPLES = REPO / "examples"
AGENT_NODE = "west-local-0"


@pytest.fixture(scope="module")
def local_pool(kaon_rig: Rig, kaon_operator: Any) -> Iterator[str]:
    """The process-agent pool registered with kubectl apply; unregistered after the module."""
    assert (("west", AGENT_NODE)) in agents.agent_nodes(kaon_rig.config)
    kubectl(kaon_rig, "apply", "-f", str(EXAMPLES / "clusters" / "local.yaml"))
    name = register_cluster(kaon_rig, EXAMPLES / "clusters" / "local.yaml")
    wait_members_ready(kaon_rig, (name,))
    yield name
    kubectl(kaon_rig, "delete", "computecluster", name, "--wait=true", "--ignore-not-found")


@pytest.fixture(scope="module")
def local_pools(kaon_rig: Rig, kaon_operator: Any) -> Iterator[list[str]]:
    """Both process-agent pools, registered with kubectl apply; unregistered afterwards."""
    nodes = agents.agent_nodes(kaon_rig.config)
    assert ("east", "east-local-0") in nodes and ("west", "west-local-0") in nodes
    names = []
    for example in ("local.yaml", "local-east.yaml"):
        kubectl(kaon_rig, "apply", "-f", str(EXAMPLES / "clusters" / example))
        names.append(register_cluster(kaon_rig, EXAMPLES / "clusters" / example))
    wait_members_ready(kaon_rig, tuple(names))
    yield names
    for name in names:
        kubectl(kaon_rig, "delete", "computecluster", name, "--wait=true", "--ignore-not-found")
