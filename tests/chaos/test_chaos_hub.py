"""The hub's API server stopped and started again mid-load: the members' gangs run on without
it, and the operator (which exits when it cannot renew its Lease, to be restarted as its
Deployment would) picks every job up again."""

from __future__ import annotations

import time

from kaon_rig import rig

from chaos.invariants import PodSampler, check_load, list_jobs
from chaos.load import Load, scaled
from chaos.ops import ensure_running, wait_leading
from kaonrig import OperatorProcess, Rig, state, wait_for

RESTARTS = scaled(1, 3)
JOBS = scaled(24, 120)


def test_hub_restarted_mid_load_loses_and_doubles_nothing(
    kaon_rig: Rig, namespace: str, operator: OperatorProcess, load: Load, sampler: PodSampler
) -> None:
    load.prefix = "hubless"
    wait_leading(operator)
    batch = JOBS // (RESTARTS + 1)
    outages, exited = [], []
    for _ in range(RESTARTS):
        load.create(batch)
        wait_for(
            lambda: list_jobs(kaon_rig, namespace),
            lambda found: sum(state(j) == "Running" for j in found.values()) >= 3,
            "some jobs running",
            90,
        )
        started, log_at = time.monotonic(), operator.log_size()
        rig.stop_cluster("hub")
        try:
            time.sleep(load.rng.uniform(1.0, 8.0))
        finally:
            rig.start_cluster("hub")
        outages.append(time.monotonic() - started)
        exited.append(ensure_running(operator))
        wait_leading(operator)
        operator.excuse_denials(log_at)  # the hub refused everything until its RBAC loaded
    load.create(JOBS - batch * RESTARTS)
    report = check_load(
        kaon_rig, namespace, load, sampler, timeout_s=scaled(150, 600), operators=(operator,)
    )
    print(
        f"hub down {[round(o, 1) for o in outages]} s; operator exited: {exited}; "
        f"{JOBS} jobs ended {report.ended_after_s:.0f} s after"
    )
