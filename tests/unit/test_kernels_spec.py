"""The runtime's reading of a TrainingJob spec: lenient at the top, strict where it trains."""

from __future__ import annotations

from typing import Any

import pytest

from apicases import RULE_CASES, Case
from kaon_kernels.jobspec import SpecError, manifest_name, parse_spec, read_spec_text

MANIFEST = """
apiVersion: kaon.dev/v1alpha1
kind: TrainingJob
metadata: {name: digits}
spec:
  model: {family: rnn, rnn: {cell: gru, hiddenSize: 32}}
  training: {epochs: 3, batchSize: 16}
  workers: 2
  resources: {cpu: 1}
  placement: {poolPreferences: [{type: cpu}]}
  checkpoint: {intervalSteps: 7, claimName: ckpt}
"""


def test_manifest_and_bare_spec_read_the_same() -> None:
    raw = read_spec_text(MANIFEST, "test")
    from_manifest = parse_spec(raw)
    assert parse_spec(raw["spec"]) == from_manifest
    assert manifest_name(raw) == "digits"
    assert from_manifest.model.rnn_or_default().hidden_size == 32
    assert from_manifest.training.batch_size == 16
    assert from_manifest.workers == 2
    assert from_manifest.checkpoint.interval_steps == 7
    assert from_manifest.data.source == "digits"


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({}, "model"),
        ({"model": {"family": "mlp"}}, "model.family"),
        ({"model": {"family": "cnn"}, "training": {"batchSize": 0}}, "training.batchSize"),
        ({"model": {"family": "cnn"}, "training": {"epoch": 3}}, "training.epoch"),
        ({"model": {"family": "cnn", "rnn": {}}}, "model.rnn"),
        (
            {"model": {"family": "cnn", "cnn": {"channels": [4], "kernelSizes": [3, 3]}}},
            "model.cnn.kernelSizes",
        ),
        ({"model": {"family": "cnn"}, "data": {"source": "file"}}, "data.path"),
        (
            {"model": {"family": "cnn"}, "checkpoint": {"intervalSteps": 0}},
            "checkpoint.intervalSteps",
        ),
    ],
)
def test_bad_specs_name_the_field(spec: dict[str, Any], field: str) -> None:
    with pytest.raises(SpecError) as err:
        parse_spec(spec)
    assert str(err.value).startswith(f"{field}:")


RUNTIME_RULE_CASES = [
    c
    for c in RULE_CASES
    if c.kind == "TrainingJob" and c.field.startswith(("spec.model.", "spec.data."))
]


@pytest.mark.parametrize("case", RUNTIME_RULE_CASES, ids=lambda c: c.name)
def test_the_runtime_refuses_what_the_api_server_does_with_its_message(case: Case) -> None:
    """The CRD's CEL rules hold for specs that never went through the API server (--spec)."""
    with pytest.raises(SpecError) as err:
        parse_spec(case.spec)
    assert str(err.value) == f"{case.field.removeprefix('spec.')}: {case.says}"


def test_unreadable_text_is_a_spec_error() -> None:
    with pytest.raises(SpecError, match="neither JSON nor YAML"):
        read_spec_text("model: [unclosed", "KAON_SPEC")
