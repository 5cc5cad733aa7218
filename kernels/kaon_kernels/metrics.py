"""Classification metrics from a confusion matrix (no scikit-learn needed at run time).

Macro averages follow scikit-learn's defaults: over every class that occurs in the labels or the
predictions, with 0 for a precision or recall whose denominator is 0.
"""

from __future__ import annotations

import torch
from torch import Tensor


def confusion_matrix(pred: Tensor, target: Tensor, num_classes: int) -> Tensor:
    """(C, C) counts, rows the true class, columns the predicted class."""
    flat = target.long() * num_classes + pred.long()
    return torch.bincount(flat, minlength=num_classes * num_classes).reshape(
        num_classes, num_classes
    )


def classification_metrics(confusion: Tensor) -> dict[str, float]:
    """accuracy and macro precision, recall and F1 from a confusion matrix."""
    cm = confusion.double()
    total = cm.sum()
    tp = cm.diagonal()
    actual = cm.sum(1)
    predicted = cm.sum(0)
    present = (actual + predicted) > 0
    precision = torch.where(predicted > 0, tp / predicted.clamp(min=1), torch.zeros_like(tp))
    recall = torch.where(actual > 0, tp / actual.clamp(min=1), torch.zeros_like(tp))
    denom = precision + recall
    f1 = torch.where(denom > 0, 2 * precision * recall / denom.clamp(min=1e-12), denom)
    n_present = int(present.sum())

    def macro(values: Tensor) -> float:
        return float(values[present].sum() / n_present) if n_present else 0.0

    return {
        "accuracy": float(tp.sum() / total) if total > 0 else 0.0,
        "precision": macro(precision),
        "recall": macro(recall),
        "f1": macro(f1),
    }
