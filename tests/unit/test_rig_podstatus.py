"""The pod status the rig's process agent writes, and its restart decisions (pure)."""

from __future__ import annotations

import pytest

from kaon_rig import podstatus

SCHEDULED = {"type": "PodScheduled", "status": "True", "lastTransitionTime": "t0"}


def test_conditions_keep_their_transition_time_while_the_status_stays() -> None:
    running = podstatus.kubelet_conditions(ready=False, terminal=False)
    first = podstatus.conditions([SCHEDULED], running, "t1")
    by_type = {c["type"]: c for c in first}
    assert set(by_type) == {
        "PodReadyToStartContainers",
        "Initialized",
        "Ready",
        "ContainersReady",
        "PodScheduled",
    }
    assert by_type["PodScheduled"] == SCHEDULED  # the scheduler's, untouched
    assert by_type["Ready"] == {
        "type": "Ready",
        "status": "False",
        "lastTransitionTime": "t1",
        "reason": "ContainersNotReady",
    }
    assert podstatus.conditions(first, running, "t2") == first  # nothing changed: same status

    ready = podstatus.conditions(
        first, podstatus.kubelet_conditions(ready=True, terminal=False), "t3"
    )
    by_type = {c["type"]: c for c in ready}
    assert by_type["Ready"] == {"type": "Ready", "status": "True", "lastTransitionTime": "t3"}
    assert by_type["Initialized"]["lastTransitionTime"] == "t1"


def test_a_terminal_pod_is_not_ready_because_it_completed() -> None:
    done = podstatus.kubelet_conditions(ready=True, terminal=True)
    assert done["Ready"] == (False, "PodCompleted")
    assert done["PodReadyToStartContainers"][0] is False and done["Initialized"][0] is True


@pytest.mark.parametrize(
    ("policy", "code", "again"),
    [
        ("Always", 0, True),
        ("Always", 137, True),
        ("OnFailure", 0, False),
        ("OnFailure", 1, True),
        ("Never", 1, False),
    ],
)
def test_restarts_follow_the_restart_policy(policy: str, code: int, again: bool) -> None:
    assert podstatus.restarts_after(policy, code) is again


def test_backoff_doubles_up_to_its_cap() -> None:
    waits = [podstatus.backoff_s(n) for n in range(1, 8)]
    assert waits[:3] == [2.0, 4.0, 8.0] and waits[-1] == podstatus.BACKOFF_CAP_S
    assert waits == sorted(waits)


def test_a_container_status_says_ready_started_and_its_restarts() -> None:
    status = podstatus.container_status(
        {"name": "srv", "image": "kaon/runtime:1"},
        state={"running": {"startedAt": "t"}},
        last_state={"terminated": {"exitCode": 137}},
        restarts=2,
        ready=True,
        started=True,
        container_id="kaon-agent://42",
    )
    assert status["name"] == "srv" and status["image"] == "kaon/runtime:1"
    assert status["ready"] and status["started"] and status["restartCount"] == 2
    assert status["lastState"]["terminated"]["exitCode"] == 137
    assert status["containerID"] == "kaon-agent://42"
