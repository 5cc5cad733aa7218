"""The family registry: every family builds, trains, saves and serves; no other name is accepted."""

from __future__ import annotations

from pathlib import Path
from typing import Any, get_args

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from kaon_kernels.artifact import load_artifact, save_artifact
from kaon_kernels.config import DataConfig, FamilyName, ModelConfig
from kaon_kernels.data import load_data
from kaon_kernels.families.base import Family
from kaon_kernels.families.registry import FAMILIES, UnknownFamilyError, family
from kaon_kernels.models import build_model
from kaon_kernels.serve.model import Engine

NAMES = sorted(FAMILIES)


def test_every_name_the_crd_accepts_is_registered_under_its_own_name() -> None:
    assert sorted(get_args(FamilyName)) == NAMES
    assert {"cnn", "rnn"} <= set(NAMES)
    for name, entry in FAMILIES.items():
        assert entry.name == name
        # The family's settings sit in ModelConfig under the family's name, of its settings type.
        field = ModelConfig.model_fields[name]
        assert field.annotation == entry.settings_type | None
        assert field.default is None


@pytest.mark.parametrize("name", NAMES)
def test_omitted_settings_are_the_defaults_and_given_ones_are_used(name: str) -> None:
    entry: Family[Any] = family(name)
    assert entry.settings(ModelConfig.model_validate({"family": name})) == entry.settings_type()
    given = entry.resolve(entry.settings_type())
    cfg = ModelConfig.model_validate({"family": name, name: given.model_dump(by_alias=True)})
    assert entry.settings(cfg) == given


@pytest.mark.parametrize("name", NAMES)
def test_every_family_trains_a_step_on_the_shipped_digits(name: str) -> None:
    entry = family(name)
    data = load_data(DataConfig(), name, seed=0)  # type: ignore[arg-type]
    assert len(data.in_shape) == len(entry.sample_dims)
    assert data.train_x.shape[0] + data.val_x.shape[0] == 1797
    torch.manual_seed(0)
    model = build_model(ModelConfig.model_validate({"family": name}), data.in_shape, 10)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = data.train_x[:64], data.train_y[:64]
    model.train()
    loss = nn.functional.cross_entropy(model(x), y)
    torch.autograd.backward(loss)
    optimizer.step()
    assert torch.isfinite(loss)
    unchanged = [k for k, v in model.named_parameters() if torch.equal(v, before[k])]
    assert unchanged == []  # every parameter is trained


@pytest.mark.parametrize("name", NAMES)
def test_every_family_round_trips_through_its_artifact_and_serves(
    tmp_path: Path, name: str
) -> None:
    entry = family(name)
    data = load_data(DataConfig(), name, seed=0)  # type: ignore[arg-type]
    cfg = ModelConfig.model_validate({"family": name})
    model = build_model(cfg, data.in_shape, data.num_classes).eval()
    save_artifact(tmp_path, model, cfg, data.in_shape, 10, data.mean, data.std, "digits")

    loaded, meta = load_artifact(tmp_path)
    # The settings are stored spelled out, so a change of defaults cannot change the rebuild.
    assert meta["model"] == {
        "family": name,
        name: entry.resolve(entry.settings_type()).model_dump(mode="json", by_alias=True),
    }
    assert meta["input_shape"] == list(data.in_shape)
    x = data.val_x[:16]
    with torch.no_grad():
        expected = model(x)
        assert_close(loaded(x), expected)
    served = Engine(tmp_path, "digits").forward(x * data.std + data.mean)
    assert_close(torch.tensor(served.outputs["logits"].rows), expected, rtol=1e-4, atol=1e-4)


def test_a_cnn_artifact_spells_out_its_kernel_sizes(tmp_path: Path) -> None:
    cfg = ModelConfig.model_validate({"family": "cnn", "cnn": {"channels": [4, 6]}})
    save_artifact(tmp_path, build_model(cfg, (1, 8, 8), 10), cfg, (1, 8, 8), 10, 0.0, 1.0, "d")
    _, meta = load_artifact(tmp_path)
    assert meta["model"]["cnn"]["kernelSizes"] == [3, 3]


@pytest.mark.parametrize("name", NAMES)
def test_a_sample_of_the_wrong_rank_is_refused_naming_the_dimensions(name: str) -> None:
    entry = family(name)
    dims = ", ".join(entry.sample_dims)
    wrong = (4,) * (len(entry.sample_dims) + 1)
    with pytest.raises(ValueError, match=f"{name} models take \\({dims}\\) samples"):
        build_model(ModelConfig.model_validate({"family": name}), wrong, 10)


def test_an_unknown_family_is_refused_naming_it_and_the_known_ones(tmp_path: Path) -> None:
    message = r"unknown model family 'mlp'; known families: cnn, rnn"
    with pytest.raises(UnknownFamilyError, match=message):
        family("mlp")
    # Never a silent fallback: a config that skipped validation is refused, not built as an rnn.
    unchecked = ModelConfig.model_construct(family="mlp")  # type: ignore[arg-type]
    with pytest.raises(UnknownFamilyError, match=message):
        build_model(unchecked, (8, 8), 10)
    with pytest.raises(UnknownFamilyError, match=message):
        save_artifact(tmp_path, nn.Linear(1, 2), unchecked, (1,), 2, 0.0, 1.0, "x")
    with pytest.raises(UnknownFamilyError, match=message):
        load_data(DataConfig(), "mlp", seed=0)  # type: ignore[arg-type]
