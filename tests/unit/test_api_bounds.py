"""Every number, quantity, string, list and map a user writes in a kaon spec is bounded by the
generated schema, and pydantic refuses the same out-of-range values."""

from __future__ import annotations

from typing import Any

import pytest

from apicases import (
    BOUND_CASES,
    CPU_RANGE,
    JOB,
    MAX_QUANTITY_LENGTH,
    MEMORY_RANGE,
    Case,
    refusals,
)
from kaon.api.crd import RESOURCES, Resource, openapi_schema


def unbounded(node: dict[str, Any], path: str) -> list[str]:
    """Paths below `node` whose values have no upper (or, for numbers, lower) limit."""
    found = []
    kind = node.get("type")
    if node.get("x-kubernetes-int-or-string"):
        if "maxLength" not in node or not node.get("x-kubernetes-validations"):
            found.append(f"{path}: a quantity needs maxLength and a range rule")
    elif kind in ("integer", "number"):
        if "minimum" not in node or "maximum" not in node:
            found.append(f"{path}: a number needs minimum and maximum")
    elif kind == "string":
        if "maxLength" not in node and "enum" not in node:
            found.append(f"{path}: a string needs maxLength or enum")
    elif kind == "array":
        if "maxItems" not in node:
            found.append(f"{path}: a list needs maxItems")
        found += unbounded(node["items"], f"{path}[]")
    elif kind == "object":
        if "additionalProperties" in node:
            if "maxProperties" not in node:
                found.append(f"{path}: a map needs maxProperties")
            found += unbounded(node["additionalProperties"], f"{path}{{}}")
        for name, sub in node.get("properties", {}).items():
            found += unbounded(sub, f"{path}.{name}")
    return found


@pytest.mark.parametrize("resource", RESOURCES, ids=lambda r: r.kind)
def test_every_spec_value_is_bounded(resource: Resource) -> None:
    assert unbounded(openapi_schema(resource)["properties"]["spec"], "spec") == []


def test_the_bound_walk_finds_an_unbounded_field() -> None:
    node = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 0}}}
    assert unbounded(node, "spec") == ["spec.n: a number needs minimum and maximum"]


@pytest.mark.parametrize("case", BOUND_CASES, ids=lambda c: c.id)
def test_pydantic_refuses_out_of_range_values_at_the_field(case: Case) -> None:
    found = refusals(case.kind, case.spec)
    assert any(path == case.field and case.says in msg for path, msg in found), found


@pytest.mark.parametrize(
    ("cpu", "memory"),
    [("1m", "1Mi"), ("1024", "64Ti"), (1024, 1 << 20), ("0.5", "1.5Gi"), ("+2", "1e9"), (1, "1G")],
)
def test_quantities_within_range_are_accepted(cpu: Any, memory: Any) -> None:
    assert refusals("TrainingJob", JOB | {"resources": {"cpu": cpu, "memory": memory}}) == []


@pytest.mark.parametrize(
    ("resources", "field", "says"),
    [
        ({"cpu": "1025"}, "spec.resources.cpu", CPU_RANGE),
        ({"cpu": "0.0009"}, "spec.resources.cpu", CPU_RANGE),
        ({"cpu": -1}, "spec.resources.cpu", CPU_RANGE),
        ({"memory": "1023Ki"}, "spec.resources.memory", MEMORY_RANGE),
        ({"memory": "65Ti"}, "spec.resources.memory", MEMORY_RANGE),
        ({"memory": "1e-3"}, "spec.resources.memory", MEMORY_RANGE),
    ],
)
def test_quantities_out_of_range_are_refused(
    resources: dict[str, Any], field: str, says: str
) -> None:
    assert refusals("TrainingJob", JOB | {"resources": resources}) == [(field, says)]


@pytest.mark.parametrize(
    "cpu", ["lots", "1" * (MAX_QUANTITY_LENGTH + 1), True, 1.5, "1 Gi", "--1", None]
)
def test_what_is_not_a_quantity_is_refused(cpu: Any) -> None:
    found = refusals("TrainingJob", JOB | {"resources": {"cpu": cpu}})
    assert found and all(path.startswith("spec.resources.cpu") for path, _ in found), found
