"""The operator processes under chaos: kept running, and whether they lead."""

from __future__ import annotations

import time

from kaonrig import OperatorProcess, wait_for


def running(op: OperatorProcess) -> bool:
    return op.proc is not None and op.proc.poll() is None


def ensure_running(op: OperatorProcess) -> bool:
    """Start the operator again if it has exited (as its Deployment would); whether it had."""
    if running(op):
        return False
    op.start()
    return True


def leads(op: OperatorProcess) -> bool:
    """Whether the operator's current process has taken the Lease (its identity is
    hostname-pid; kaon.engine.leader logs "leader election: <identity> leads (Lease ...)")."""
    if not running(op):
        return False
    assert op.proc is not None
    text = op.log_path.read_text(errors="replace") if op.log_path.exists() else ""
    return f"-{op.proc.pid} leads (Lease " in text


def wait_leading(op: OperatorProcess, timeout_s: float = 90.0) -> float:
    """Wait until the operator's current process leads; the seconds that took."""
    start = time.monotonic()
    wait_for(
        lambda: (leads(op), running(op)),
        lambda seen: seen[0] or not seen[1],
        f"the operator to take the Lease (log {op.log_path})",
        timeout_s,
        interval_s=0.5,
    )
    assert running(op), f"the operator exited before it led; log {op.log_path}"
    return time.monotonic() - start
