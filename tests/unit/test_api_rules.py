"""Every CEL rule of the kaon kinds is declared once and enforced twice: by the API server (the
generated schema) and by pydantic, with the same message at the same field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel, Field, ValidationError

from apicases import CLUSTER, JOB, RULE_CASES, SERVE, Case, Kind, refusals
from kaon.api.crd import RESOURCES, Resource, openapi_schema
from kaon.api.schema import model_schema
from kaon_kernels.config import Rule, Spec, rule

REPO = Path(__file__).resolve().parents[2]
BY_KIND = {r.kind: r for r in RESOURCES}


def rule_messages(node: Any) -> list[str]:
    """Messages of every x-kubernetes-validations entry below a schema node."""
    if isinstance(node, list):
        return [m for item in node for m in rule_messages(item)]
    if not isinstance(node, dict):
        return []
    own = [entry["message"] for entry in node.get("x-kubernetes-validations", [])]
    return own + [m for key, value in node.items() for m in rule_messages(value)]


@pytest.mark.parametrize("case", RULE_CASES, ids=lambda c: c.id)
def test_pydantic_refuses_what_the_rule_refuses_with_its_message(case: Case) -> None:
    assert (case.field, case.says) in refusals(case.kind, case.spec)


@pytest.mark.parametrize("resource", RESOURCES, ids=lambda r: r.kind)
def test_every_rule_in_the_schema_has_a_refused_example(resource: Resource) -> None:
    spec_schema = openapi_schema(resource)["properties"]["spec"]
    tested = {c.says for c in RULE_CASES if c.kind == resource.kind}
    untested = set(rule_messages(spec_schema)) - tested
    assert not untested, f"add a case to tests/apicases.py for {sorted(untested)}"


@pytest.mark.parametrize(
    ("kind", "spec"),
    [("TrainingJob", JOB), ("InferenceService", SERVE), ("ComputeCluster", CLUSTER)],
)
def test_the_smallest_specs_pass_every_rule(kind: Kind, spec: dict[str, Any]) -> None:
    assert refusals(kind, spec) == []


def example_specs() -> list[tuple[str, Kind, dict[str, Any]]]:
    found = []
    for path in sorted((REPO / "examples").rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and doc.get("kind") in BY_KIND:
                found.append((path.name, doc["kind"], doc["spec"]))
    return found


@pytest.mark.parametrize(("where", "kind", "spec"), example_specs())
def test_the_examples_pass_every_rule_and_bound(
    where: str, kind: Kind, spec: dict[str, Any]
) -> None:
    assert refusals(kind, spec) == [], where


class _Window(Spec):
    low: int = Field(default=0, description="Low end.")
    high: int = Field(default=0, description="High end.")

    @rule("self.low <= self.high", "low must not exceed high", ".low")
    def _ordered(self) -> bool:
        return self.low <= self.high

    @rule("self.high < 100", "high must stay under 100")
    def _small(self) -> bool:
        return self.high < 100


class _WideWindow(_Window):
    width: int = Field(default=0, description="Width.")


def test_a_rule_declared_once_lands_in_the_schema_in_declaration_order() -> None:
    assert model_schema(_Window)["x-kubernetes-validations"] == [
        {
            "rule": "self.low <= self.high",
            "message": "low must not exceed high",
            "fieldPath": ".low",
        },
        {"rule": "self.high < 100", "message": "high must stay under 100"},
    ]
    assert [r.message for r in _WideWindow.cel_rules] == [r.message for r in _Window.cel_rules]


def test_a_rule_refuses_in_python_at_its_field_path() -> None:
    class Holder(BaseModel):
        window: _Window

    with pytest.raises(ValidationError) as err:
        Holder.model_validate({"window": {"low": 5, "high": 1}})
    assert [(e["loc"], e["msg"]) for e in err.value.errors()] == [
        (("window", "low"), "low must not exceed high")
    ]
    with pytest.raises(ValidationError, match="high must stay under 100"):
        _WideWindow(high=100)
    assert _Window(low=1, high=2).high == 2


def test_a_field_rule_checks_the_value_and_sits_on_the_fields_schema() -> None:
    from typing import Annotated  # noqa: PLC0415

    even = Rule("self % 2 == 0", "must be even", lambda v: v % 2 == 0)

    class Even(Spec):
        n: Annotated[int, even] = Field(default=0, description="An even number.")

    assert model_schema(Even)["properties"]["n"]["x-kubernetes-validations"] == [
        {"rule": "self % 2 == 0", "message": "must be even"}
    ]
    with pytest.raises(ValidationError) as err:
        Even(n=3)
    assert [(e["loc"], e["msg"]) for e in err.value.errors()] == [(("n",), "must be even")]
