"""Data: the digits set and the user's file format, the seeded split, and the metrics."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from sklearn import metrics as skm  # type: ignore[import-untyped]

from kaon_kernels.config import DataConfig
from kaon_kernels.data import load_data, split
from kaon_kernels.metrics import classification_metrics, confusion_matrix


def test_digits_shapes_per_family() -> None:
    cnn = load_data(DataConfig(), "cnn", seed=0)
    rnn = load_data(DataConfig(), "rnn", seed=0)
    assert cnn.in_shape == (1, 8, 8)
    assert rnn.in_shape == (8, 8)
    assert cnn.num_classes == rnn.num_classes == 10
    assert cnn.train_x.shape[0] + cnn.val_x.shape[0] == 1797
    assert cnn.val_x.shape[0] == round(1797 * 0.2)


def test_split_is_deterministic_per_seed() -> None:
    a = load_data(DataConfig(validation_fraction=0.3), "rnn", seed=7)
    b = load_data(DataConfig(validation_fraction=0.3), "rnn", seed=7)
    c = load_data(DataConfig(validation_fraction=0.3), "rnn", seed=8)
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.val_y, b.val_y)
    assert not torch.equal(a.val_y, c.val_y)


def test_normalisation_uses_training_statistics_only() -> None:
    x = torch.arange(10, dtype=torch.float32).reshape(10, 1, 1, 1)
    y = torch.tensor([0, 1] * 5)
    s = split(x, y, validation_fraction=0.5, seed=0)
    raw_train = s.train_x * s.std + s.mean
    assert s.mean == pytest.approx(float(raw_train.mean()))
    assert float(s.train_x.mean()) == pytest.approx(0.0, abs=1e-6)
    assert float(s.train_x.std()) == pytest.approx(1.0, abs=1e-6)
    # Validation samples are scaled with the same (training) statistics, not their own.
    train_values = {round(float(v)) for v in raw_train.flatten()}
    val_values = {round(float(v)) for v in (s.val_x * s.std + s.mean).flatten()}
    assert train_values.isdisjoint(val_values) and len(train_values | val_values) == 10


def _save(path: Path, obj: object) -> DataConfig:
    torch.save(obj, path)
    return DataConfig(source="file", path=str(path))


def test_file_source_reads_the_documented_format(tmp_path: Path) -> None:
    x = torch.randn(20, 6, 5)
    y = torch.arange(20) % 3
    cfg = _save(tmp_path / "d.pt", {"x": x, "y": y})
    rnn = load_data(cfg, "rnn", seed=0)
    assert rnn.in_shape == (6, 5) and rnn.num_classes == 3
    cnn = load_data(cfg, "cnn", seed=0)
    assert cnn.in_shape == (1, 6, 5)


@pytest.mark.parametrize(
    ("obj", "family", "message"),
    [
        ([1, 2], "cnn", 'dict with tensors "x" and "y"'),
        ({"x": torch.zeros(4, 2, 2)}, "cnn", 'dict with tensors "x" and "y"'),
        ({"x": torch.zeros(4, 2, 2, dtype=torch.long), "y": torch.zeros(4)}, "cnn", "floating"),
        ({"x": torch.zeros(4, 2, 2), "y": torch.zeros(4)}, "cnn", "integer"),
        ({"x": torch.zeros(4, 2, 2), "y": torch.zeros(3, dtype=torch.long)}, "cnn", "(N,)"),
        ({"x": torch.zeros(4, 2), "y": torch.tensor([0, 1, 0, 1])}, "rnn", "steps, features"),
        ({"x": torch.zeros(4, 1, 2, 2, 2), "y": torch.tensor([0, 1, 0, 1])}, "cnn", "C, H, W"),
        ({"x": torch.full((4, 2, 2), float("nan")), "y": torch.tensor([0, 1, 0, 1])}, "rnn", "NaN"),
        ({"x": torch.zeros(4, 2, 2), "y": torch.tensor([0, -1, 0, 1])}, "rnn", "negative"),
        ({"x": torch.zeros(4, 2, 2), "y": torch.zeros(4, dtype=torch.long)}, "rnn", "2 classes"),
    ],
)
def test_bad_files_are_refused_with_the_problem_named(
    tmp_path: Path, obj: object, family: str, message: str
) -> None:
    cfg = _save(tmp_path / "bad.pt", obj)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_data(cfg, family, seed=0)  # type: ignore[arg-type]


def test_missing_and_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no such file"):
        load_data(DataConfig(source="file", path=str(tmp_path / "none.pt")), "cnn", 0)
    (tmp_path / "junk.pt").write_text("not a tensor file")
    with pytest.raises(ValueError, match="not a torch tensor file"):
        load_data(DataConfig(source="file", path=str(tmp_path / "junk.pt")), "cnn", 0)


def test_metrics_match_scikit_learn_macro_averages() -> None:
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 5, (200,), generator=g)
    pred = torch.where(torch.rand(200, generator=g) < 0.7, target, torch.randint(0, 6, (200,)))
    got = classification_metrics(confusion_matrix(pred, target, 6))
    t, p = target.numpy(), pred.numpy()
    assert got["accuracy"] == pytest.approx(skm.accuracy_score(t, p))
    for name, fn in [
        ("precision", skm.precision_score),
        ("recall", skm.recall_score),
        ("f1", skm.f1_score),
    ]:
        assert got[name] == pytest.approx(fn(t, p, average="macro", zero_division=0)), name
