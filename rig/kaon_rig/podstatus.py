"""What the rig's process agent writes into a pod's status, and when it restarts a container (pure).

The agent keeps one pod's state (its container's state and last state, restarts, probe results)
and rebuilds the whole status from it after every change; identical statuses are not written
again, so a pod whose probes keep passing costs the API server nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

Obj = dict[str, Any]
BACKOFF_CAP_S = 30.0
# The conditions a kubelet owns, in the order it reports them (PodScheduled is the scheduler's).
KUBELET_CONDITIONS = ("PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady")


def exit_code(returncode: int) -> int:
    """A signal death as a shell (and a kubelet) reports it: 128 + signal number."""
    return 128 - returncode if returncode < 0 else returncode


def restarts_after(policy: str, code: int) -> bool:
    """Whether a container that exited with `code` is started again under the restartPolicy."""
    return policy == "Always" or (policy == "OnFailure" and code != 0)


def backoff_s(restarts: int) -> float:
    """The wait before restart number `restarts` (a kubelet's CrashLoopBackOff, shortened)."""
    return min(BACKOFF_CAP_S, 2.0**restarts)


def conditions(
    previous: Sequence[Obj], wanted: Mapping[str, tuple[bool, str]], now: str
) -> list[Obj]:
    """`wanted` (type -> (status, reason when False)) over `previous`.

    A condition keeps its lastTransitionTime while its status stays; conditions not in `wanted`
    (the scheduler's PodScheduled) are kept as they are.
    """
    before = {c["type"]: c for c in previous}
    out: list[Obj] = []
    for type_, (ok, reason) in wanted.items():
        status = "True" if ok else "False"
        old = before.get(type_) or {}
        since = old["lastTransitionTime"] if old.get("status") == status else now
        cond: Obj = {"type": type_, "status": status, "lastTransitionTime": since}
        if not ok and reason:
            cond["reason"] = reason
        out.append(cond)
    out += [c for c in previous if c["type"] not in wanted]
    return out


def kubelet_conditions(*, ready: bool, terminal: bool) -> dict[str, tuple[bool, str]]:
    """The kubelet's conditions of a pod whose single container runs (or ran, if terminal)."""
    not_ready = "PodCompleted" if terminal else "ContainersNotReady"
    return {
        "PodReadyToStartContainers": (not terminal, ""),
        "Initialized": (True, ""),
        "Ready": (ready and not terminal, not_ready),
        "ContainersReady": (ready and not terminal, not_ready),
    }


def container_status(
    container: Obj,
    *,
    state: Obj,
    last_state: Obj,
    restarts: int,
    ready: bool,
    started: bool,
    container_id: str = "",
) -> Obj:
    status: Obj = {
        "name": container.get("name", ""),
        "image": container.get("image", ""),
        "imageID": "",
        "ready": ready,
        "started": started,
        "restartCount": restarts,
        "state": state,
        "lastState": last_state,
    }
    if container_id:
        status["containerID"] = container_id
    return status
