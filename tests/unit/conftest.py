"""Fixtures of the fast tier's engine tests: worlds of in-memory API servers on a fake clock."""

from __future__ import annotations

import asyncio

import pytest

from kaon.clusters import informer

from enginekit import MemberSpec, World


@pytest.fixture
def fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Informers retry at once instead of sleeping after an error (an unreachable member)."""

    async def no_wait(attempt: int, cap_s: float = 10.0) -> None:
        await asyncio.sleep(0)

    monkeypatch.setattr(informer, "sleep_backoff", no_wait)


@pytest.fixture
def world(fast_backoff: None) -> World:
    """The hub and one member, west: a CPU pool (2 nodes of 8 cores) and a GPU pool (1 node of
    4 GPUs, tainted)."""
    return World()


@pytest.fixture
def world2(fast_backoff: None) -> World:
    """The hub, west (cheaper CPU pool) and east (a CPU pool only, dearer)."""
    return World([MemberSpec("west"), MemberSpec("east", gpu_nodes=0, cpu_cost=2.0)])
