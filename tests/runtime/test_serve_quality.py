"""Drift against the artifact's reference, on the shipped digits: held-out digits do not drift,
shifted ones do; the reference survives its file; live quality matches the training metrics."""

from __future__ import annotations

import random
from pathlib import Path

import torch

from kaon_kernels import reference
from kaon_kernels.config import DataConfig
from kaon_kernels.data import load_data
from kaon_kernels.metrics import classification_metrics, confusion_matrix
from kaon_kernels.serve.feedback import FeedbackWindow
from kaon_kernels.serve.monitor import DriftMonitor

THRESHOLD = 0.25  # the spec's default: a large shift


def digits() -> tuple[torch.Tensor, torch.Tensor, reference.Reference]:
    """Raw training and held-out digits (pixel values 0..16), and the training reference."""
    split = load_data(DataConfig(validation_fraction=0.3), "cnn", seed=0)
    train = split.train_x * split.std + split.mean
    held_out = split.val_x * split.std + split.mean
    ref = reference.build(train, split.train_y, split.num_classes)
    return train, held_out, ref


def streamed(monitor: DriftMonitor, x: torch.Tensor, batch: int = 7) -> None:
    for start in range(0, x.shape[0], batch):
        chunk = x[start : start + batch]
        monitor.observe(chunk, torch.zeros(chunk.shape[0], dtype=torch.long))


def test_held_out_digits_do_not_drift_and_shifted_ones_do() -> None:
    torch.manual_seed(0)
    _, held_out, ref = digits()
    calm = DriftMonitor(ref, window=500, min_samples=200)
    streamed(calm, held_out[:150])
    assert calm.snapshot().score is None  # too few samples to say anything
    streamed(calm, held_out[150:500])
    quiet = calm.snapshot()
    assert quiet.samples == 500 and quiet.score is not None and quiet.score < 0.1

    for name, shifted in {
        "brighter": (held_out + 4).clamp(max=16),
        "inverted": 16 - held_out,
        "noisy": (held_out + torch.randn_like(held_out) * 3).clamp(0, 16),
    }.items():
        monitor = DriftMonitor(ref, window=500, min_samples=200)
        streamed(monitor, shifted[:500])
        snap = monitor.snapshot()
        assert snap.score is not None and snap.score > THRESHOLD, name
        assert snap.worst_feature is not None and snap.feature_psi[snap.worst_feature] == snap.score


def test_the_window_slides_back_to_quiet_after_a_shift() -> None:
    _, held_out, ref = digits()
    monitor = DriftMonitor(ref, window=300, min_samples=200)
    streamed(monitor, 16 - held_out[:300])
    assert (monitor.snapshot().score or 0) > THRESHOLD
    streamed(monitor, held_out[:300])  # a whole window of unshifted inputs
    assert (monitor.snapshot().score or 1) < 0.1


def test_the_reference_survives_its_file_and_predictions_are_shared_by_class(
    tmp_path: Path,
) -> None:
    _, _, ref = digits()
    reference.save(tmp_path, ref)
    loaded = reference.load(tmp_path)
    assert loaded is not None and loaded.samples == ref.samples
    assert torch.equal(loaded.edges, ref.edges)
    assert torch.allclose(loaded.shares, ref.shares, atol=1e-6)
    assert abs(sum(loaded.class_shares) - 1) < 1e-5 and len(loaded.class_shares) == 10
    assert reference.load(tmp_path / "missing") is None


def test_live_quality_is_the_training_metrics_of_the_same_pairs() -> None:
    rng = random.Random(3)
    window = FeedbackWindow(num_classes=5, window=400)
    pairs = []
    for i in range(100):
        predicted = tuple(rng.randrange(5) for _ in range(4))
        truth = [p if rng.random() < 0.6 else rng.randrange(5) for p in predicted]
        window.predicted(f"r{i}", predicted)
        assert window.feedback(f"r{i}", truth) == 4
        pairs += list(zip(predicted, truth, strict=True))
    quality = window.quality()
    assert quality is not None and quality.pairs == 400
    pred, true = torch.tensor([p for p, _ in pairs]), torch.tensor([t for _, t in pairs])
    expected = classification_metrics(confusion_matrix(pred, true, 5))
    assert abs(quality.accuracy - expected["accuracy"]) < 1e-9
    assert abs(quality.macro_recall - expected["recall"]) < 1e-9
    assert abs(quality.macro_f1 - expected["f1"]) < 1e-9
