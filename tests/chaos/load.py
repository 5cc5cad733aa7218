"""The load of the chaos suite: kwok-simulated TrainingJobs spread over east and west, with
what each one is expected to end as."""

from __future__ import annotations

import itertools
import os
import random
from dataclasses import dataclass
from typing import Any

from kaon.api.names import RESUMABLE_EXIT_CODE

from kaonrig import Jobs

# KAON_CHAOS=long (make chaos) scales the counts up; the short form runs inside `make test`.
LONG = os.environ.get("KAON_CHAOS", "short") == "long"

# Never the process-agent pools (a real job of the scenario may have them registered): there
# a simulated worker would start a real training process.
SIMULATED = [{"key": "kaon.dev/runs", "operator": "DoesNotExist"}]


def selector(labels: dict[str, str]) -> dict[str, Any]:
    return {"clusterSelector": {"matchLabels": labels, "matchExpressions": SIMULATED}}


# "any": west's cheaper CPU pool first, east when full or lost.
PLACEMENTS = {
    "east": selector({"region": "us-east"}),
    "west": selector({"region": "eu-west"}),
    "any": selector({}),
}
APP_CODES = (1, 2, 3, 42)


def scaled(short: int, long: int) -> int:
    return long if LONG else short


@dataclass(frozen=True)
class Expect:
    """One job of the load and how it must end (restarts: charged and free, when known)."""

    name: str
    workers: int
    where: str  # east | west | any
    state: str = "Succeeded"
    restarts: int | None = None
    infra_restarts: int | None = None


def fail_plan(rng: random.Random, workers: int) -> dict[int, dict[int, int]]:
    """{attempt: {rank: exit code}} for the first attempts: some fail one or more ranks with an
    app code (charged), some with 143 (resumable, free), never both in one attempt (which of
    the two the operator sees first would decide what is charged)."""
    plan: dict[int, dict[int, int]] = {}
    for attempt in range(rng.randint(1, 4)):
        roll = rng.random()
        if roll < 0.35:
            continue
        ranks = rng.sample(range(workers), rng.randint(1, workers))
        if roll < 0.7:
            plan[attempt] = {r: rng.choice(APP_CODES) for r in ranks}
        else:
            plan[attempt] = dict.fromkeys(ranks, RESUMABLE_EXIT_CODE)
    return plan


def outcome(plan: dict[int, dict[int, int]], backoff_limit: int) -> tuple[str, int, int]:
    """(final state, charged restarts, free restarts) the plan leads to under the backoff limit."""
    charged = free = 0
    for attempt in itertools.count():
        codes = plan.get(attempt, {}).values()
        if not codes:
            return "Succeeded", charged, free
        if all(c == RESUMABLE_EXIT_CODE for c in codes):
            free += 1
        elif charged >= backoff_limit:
            return "Failed", charged, free
        else:
            charged += 1
    raise AssertionError("unreachable")


def sim_annotations(duration_s: float, plan: dict[int, dict[int, int]]) -> dict[str, str]:
    found = {"kaon.dev/sim-exit-code": "0", "kaon.dev/sim-duration": f"{duration_s:.1f}s"}
    entries = [f"{a}:{r}:{c}" for a, ranks in sorted(plan.items()) for r, c in ranks.items()]
    if entries:
        found["kaon.dev/sim-fail"] = ",".join(entries)
    return found


def job_spec(workers: int, where: str, backoff_limit: int, grace_s: int) -> dict[str, Any]:
    return {
        "model": {"family": "cnn"},
        "workers": workers,
        "resources": {"cpu": 2, "memory": "4Gi"},
        "placement": PLACEMENTS[where],
        "runPolicy": {"backoffLimit": backoff_limit, "failover": {"graceSeconds": grace_s}},
    }


@dataclass
class Load:
    """Creates the jobs of one scenario in batches; remembers what each must end as."""

    jobs: Jobs
    namespace: str
    seed: int
    prefix: str = "job"
    grace_s: int = 15
    duration_s: tuple[float, float] = (2.0, 5.0)
    failures: bool = False  # kaon.dev/sim-fail plans on about half of the jobs
    wheres: tuple[str, ...] = ("east", "west", "any")

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.expected: dict[str, Expect] = {}
        self.workers: dict[str, int] = {}  # gang sizes, as the PodSampler reads them

    def create(self, count: int) -> list[str]:
        made = []
        for _ in range(count):
            i = len(self.expected)
            name = f"{self.prefix}-{i}"
            workers = self.rng.choice((1, 2, 2, 3))
            where = self.wheres[i % len(self.wheres)]
            backoff = self.rng.randint(0, 3)
            plan = fail_plan(self.rng, workers) if self.failures and self.rng.random() < 0.6 else {}
            state, charged, free = outcome(plan, backoff)
            duration = self.rng.uniform(*self.duration_s)
            self.workers[name] = workers
            self.jobs.create(
                self.namespace,
                name,
                job_spec(workers, where, backoff, self.grace_s),
                sim_annotations(duration, plan),
            )
            self.expected[name] = Expect(name, workers, where, state, charged, free)
            made.append(name)
        return made
