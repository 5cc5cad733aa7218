"""Models build for every family and cell and classify batches of the right shape."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.testing import assert_close

from kaon_kernels.artifact import load_artifact, save_artifact
from kaon_kernels.config import CNNConfig, ModelConfig, RNNConfig
from kaon_kernels.models import build_model
from kaon_kernels.ops import FusedLSTM

CNN_CASES = [
    CNNConfig(),
    CNNConfig(channels=[4], kernel_sizes=[5], pooling="avg", batch_norm=False, hidden_units=3),
    CNNConfig(channels=[2, 3, 4, 5, 6, 7, 8, 9], pooling="max"),  # deeper than 8x8 can pool
    CNNConfig(channels=[3, 5], pooling="none", dropout=0.0),
]


@pytest.mark.parametrize("cnn", CNN_CASES, ids=lambda c: f"{c.channels}-{c.pooling}")
def test_cnn_builds_and_gives_logits_per_class(cnn: CNNConfig) -> None:
    model = build_model(ModelConfig(family="cnn", cnn=cnn), (1, 8, 8), 10)
    assert model(torch.randn(4, 1, 8, 8)).shape == (4, 10)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize(("layers", "bidirectional"), [(1, False), (2, True), (3, False)])
def test_rnn_builds_for_every_cell(cell: str, layers: int, bidirectional: bool) -> None:
    rnn = RNNConfig.model_validate(
        {"cell": cell, "hiddenSize": 6, "layers": layers, "bidirectional": bidirectional}
    )
    model = build_model(ModelConfig(family="rnn", rnn=rnn), (8, 8), 7)
    assert model(torch.randn(5, 8, 8)).shape == (5, 7)


def test_lstm_runs_the_fused_kernel() -> None:
    model = build_model(ModelConfig(family="rnn"), (8, 8), 10)
    assert any(isinstance(m, FusedLSTM) for m in model.modules())


def test_defaults_are_used_when_family_settings_are_omitted() -> None:
    model = build_model(ModelConfig(family="cnn"), (3, 16, 12), 4)
    assert model(torch.randn(2, 3, 16, 12)).shape == (2, 4)


@pytest.mark.parametrize(
    ("cfg", "shape", "classes", "message"),
    [
        (ModelConfig(family="cnn"), (8, 8), 10, "channels, height, width"),
        (ModelConfig(family="rnn"), (1, 8, 8), 10, "steps, features"),
        (ModelConfig(family="cnn"), (1, 8, 8), 1, "at least 2 classes"),
        (
            # Unvalidated: pydantic refuses it already (the CEL rule's twin, test_api_rules.py).
            ModelConfig.model_construct(
                family="cnn", cnn=CNNConfig.model_construct(channels=[4, 4], kernel_sizes=[3])
            ),
            (1, 8, 8),
            10,
            "kernelSizes",
        ),
    ],
)
def test_bad_shapes_or_settings_are_refused(
    cfg: ModelConfig, shape: tuple[int, ...], classes: int, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        build_model(cfg, shape, classes)


def test_artifact_round_trip(tmp_path: Path) -> None:
    cfg = ModelConfig(family="rnn", rnn=RNNConfig(cell="gru", hidden_size=5))
    model = build_model(cfg, (8, 8), 10).eval()
    save_artifact(tmp_path, model, cfg, (8, 8), 10, 4.5, 6.0, "digits")
    loaded, meta = load_artifact(tmp_path)
    x = torch.randn(3, 8, 8)
    with torch.no_grad():
        assert_close(loaded(x), model(x))
    assert meta["normalization"] == {"mean": 4.5, "std": 6.0}
    assert (tmp_path / "model.json").read_text().startswith('{"name": "digits", "family": "rnn"')
