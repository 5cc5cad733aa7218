"""Fixtures of the chaos suite: the session's operator kept alive around each scenario, a seeded
load of simulated jobs in the test's namespace, and a sampler of the members' pods.

KAON_CHAOS=long (make chaos) scales the scenarios up; KAON_CHAOS_SEED replays one run."""

from __future__ import annotations

import os
import random
from collections.abc import Iterator

import pytest

from chaos.invariants import PodSampler
from chaos.load import Load
from chaos.ops import ensure_running
from kaonrig import Jobs, OperatorProcess, Rig


@pytest.fixture
def operator(kaon_operator: OperatorProcess) -> Iterator[OperatorProcess]:
    """The session's operator, running before and after the scenario (which may kill it)."""
    ensure_running(kaon_operator)
    yield kaon_operator
    ensure_running(kaon_operator)


@pytest.fixture
def load(jobs: Jobs, namespace: str, request: pytest.FixtureRequest) -> Load:
    seed = int(os.environ.get("KAON_CHAOS_SEED") or random.SystemRandom().randrange(2**32))
    request.node.user_properties.append(("chaos_seed", seed))
    print(f"chaos seed {seed} (KAON_CHAOS_SEED={seed} replays it)")
    return Load(jobs, namespace, seed)


@pytest.fixture
def sampler(kaon_rig: Rig, namespace: str, load: Load) -> Iterator[PodSampler]:
    found = PodSampler(kaon_rig, namespace, load.workers).start()
    yield found
    found.stop()
