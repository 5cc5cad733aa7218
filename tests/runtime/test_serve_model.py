"""The served model: an artifact of either family answers like the model called directly."""

from __future__ import annotations

import math
from array import array
from pathlib import Path

import pytest
import torch
from torch.testing import assert_close

from kaon_kernels.artifact import load_artifact, save_artifact
from kaon_kernels.config import CNNConfig, ModelConfig, RNNConfig
from kaon_kernels.models import build_model
from kaon_kernels.serve.batcher import Part
from kaon_kernels.serve.model import Engine
from kaon_kernels.serve.protocol import InferRequest

MEAN, STD = 4.9, 6.0


def saved(tmp_path: Path, cfg: ModelConfig, shape: tuple[int, ...]) -> Path:
    torch.manual_seed(0)
    model = build_model(cfg, shape, 10)
    for module in model.modules():  # batch norm statistics other than the identity
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    save_artifact(tmp_path, model.eval(), cfg, shape, 10, MEAN, STD, "digits")
    return tmp_path


@pytest.mark.parametrize(
    ("cfg", "shape"),
    [
        (ModelConfig(family="cnn", cnn=CNNConfig(channels=[4, 8], hidden_units=16)), (1, 8, 8)),
        (ModelConfig(family="rnn", rnn=RNNConfig(cell="lstm", hidden_size=8)), (8, 8)),
    ],
)
def test_batched_answers_equal_the_model_on_normalised_raw_inputs(
    tmp_path: Path, cfg: ModelConfig, shape: tuple[int, ...]
) -> None:
    directory = saved(tmp_path, cfg, shape)
    engine = Engine(directory, "digits")
    sig = engine.signature
    assert sig.input.shape == (-1, *shape) and sig.sample_size == math.prod(shape)
    assert [(o.name, o.datatype, o.shape) for o in sig.outputs] == [
        ("logits", "FP32", (-1, 10)),
        ("probabilities", "FP32", (-1, 10)),
        ("label", "INT64", (-1,)),
    ]
    assert engine.metadata()["parameters"] == {"family": cfg.family}

    x = torch.randint(0, 17, (5, *shape)).float()
    first = InferRequest("a", array("f", x[:2].flatten().tolist()), 2, ())
    second = InferRequest("b", array("f", x[2:].flatten().tolist()), 3, ())
    result = engine.run([Part(second, 1, 3), Part(first, 0, 2)])  # b's last two, then a

    model, _ = load_artifact(directory)
    with torch.no_grad():
        direct = model((x[[3, 4, 0, 1]] - MEAN) / STD)
    assert_close(torch.tensor(result.outputs["logits"].rows), direct, rtol=1e-4, atol=1e-4)
    assert result.outputs["label"].rows == direct.argmax(1).tolist()
    assert_close(
        torch.frombuffer(bytearray(result.outputs["probabilities"].raw), dtype=torch.float32),
        torch.softmax(direct, 1).flatten(),
        rtol=1e-4,
        atol=1e-5,
    )
    assert result.outputs["label"].row_bytes == 8 and result.bad_rows == frozenset()


def test_non_finite_samples_are_flagged_and_leave_their_neighbours_alone(tmp_path: Path) -> None:
    engine = Engine(saved(tmp_path, ModelConfig(family="cnn"), (1, 8, 8)), "digits")
    x = torch.rand(3, 1, 8, 8) * 16
    clean = engine.forward(x.clone())
    x[1, 0, 3, 3] = float("nan")
    dirty = engine.forward(x)
    assert dirty.bad_rows == frozenset({1})
    assert dirty.outputs["logits"].rows[0] == clean.outputs["logits"].rows[0]
    assert dirty.outputs["logits"].rows[2] == clean.outputs["logits"].rows[2]
