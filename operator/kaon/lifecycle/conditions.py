"""Conditions in the Kubernetes API conventions: set one, keep its transition time if unchanged."""

from __future__ import annotations

from typing import Any, TypeVar, cast

from pydantic import BaseModel

from kaon.api.common import Condition

S = TypeVar("S", bound=BaseModel)  # a status model with `conditions` and `observed_generation`


def find_condition(conditions: list[Condition], type_: str) -> Condition | None:
    return next((c for c in conditions if c.type == type_), None)


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
    old = find_condition(conditions, type_)
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


def with_condition(
    status: S, type_: str, value: bool | str, reason: str, message: str, gen: int, now: str
) -> S:
    """The status with one condition set (see set_condition)."""
    current: list[Condition] = cast(Any, status).conditions
    conditions = set_condition(current, type_, value, reason, message, gen, now)
    return status.model_copy(update={"conditions": conditions})


def with_generation(status: S, gen: int, **changes: object) -> S:
    """The status with changes, as observed at generation `gen`."""
    return status.model_copy(update={"observed_generation": gen, **changes})
