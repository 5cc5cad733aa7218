"""Pure lifecycle decisions: from a job's observed worker pods to its next action."""

from kaon.lifecycle.decide import (
    Action,
    Fail,
    JobView,
    Launch,
    Observe,
    Restart,
    Succeed,
    SuspendStep,
    next_action,
    suspend_step,
)
from kaon.lifecycle.workers import WorkerState, observe_pod

__all__ = [
    "Action",
    "Fail",
    "JobView",
    "Launch",
    "Observe",
    "Restart",
    "Succeed",
    "SuspendStep",
    "WorkerState",
    "next_action",
    "observe_pod",
    "suspend_step",
]
