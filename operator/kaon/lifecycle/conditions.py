"""Conditions in the Kubernetes API conventions: set one, keep its transition time if unchanged."""

from __future__ import annotations

from kaon.api.common import Condition


def set_condition(
    conditions: list[Condition],
    type_: str,
    status: bool | str,
    reason: str,
    message: str,
    generation: int,
    now: str,
) -> list[Condition]:
    value = status if isinstance(status, str) else ("True" if status else "False")
    old = next((c for c in conditions if c.type == type_), None)
    changed = old is None or old.status != value
    new = Condition(
        type=type_,
        status=value,
        reason=reason,
        message=message,
        last_transition_time=now if changed or old is None else old.last_transition_time,
        observed_generation=generation,
    )
    return [new if c.type == type_ else c for c in conditions] if old else [*conditions, new]
