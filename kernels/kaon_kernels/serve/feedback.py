"""Live model quality from true labels sent after the fact.

Every infer answer's predicted labels are remembered under its request id (the last `remember`
requests). `POST /v2/models/NAME/feedback` with `{"id": ..., "labels": [...]}` pairs the true
labels with them; the last `window` pairs give accuracy, macro recall and macro F1 (classes
seen in the window, a 0/0 precision or recall counted as 0, as the training metrics do).
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass

REMEMBER = 10_000
WINDOW = 1000


class FeedbackError(ValueError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Quality:
    pairs: int
    accuracy: float
    macro_recall: float
    macro_f1: float


class FeedbackWindow:
    def __init__(self, num_classes: int, remember: int = REMEMBER, window: int = WINDOW) -> None:
        self.num_classes = num_classes
        self.remember = remember
        self._predicted: OrderedDict[str, tuple[int, ...]] = OrderedDict()
        self._pairs: deque[tuple[int, int]] = deque(maxlen=window)
        self.received = 0

    def predicted(self, request_id: str, labels: tuple[int, ...]) -> None:
        self._predicted[request_id] = labels
        self._predicted.move_to_end(request_id)
        while len(self._predicted) > self.remember:
            self._predicted.popitem(last=False)

    def feedback(self, request_id: object, labels: object) -> int:
        """Pair true `labels` with request `request_id`'s predictions; how many pairs."""
        if not isinstance(request_id, str):
            raise FeedbackError(400, "'id' must be the string id of an earlier infer request")
        if not isinstance(labels, list) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in labels
        ):
            raise FeedbackError(400, "'labels' must be a list of integer class labels")
        predicted = self._predicted.pop(request_id, None)
        if predicted is None:
            raise FeedbackError(
                404,
                f"no answer with id {request_id[:80]!r} is remembered (the last "
                f"{self.remember} requests are, each until its feedback arrives)",
            )
        if len(labels) != len(predicted):
            self._predicted[request_id] = predicted
            raise FeedbackError(
                400,
                f"'labels' has {len(labels)} labels; request {request_id[:80]!r} had "
                f"{len(predicted)} samples",
            )
        if any(not 0 <= v < self.num_classes for v in labels):
            self._predicted[request_id] = predicted
            raise FeedbackError(400, f"'labels' must be classes 0..{self.num_classes - 1}")
        self._pairs.extend(zip(predicted, labels, strict=True))
        self.received += len(labels)
        return len(labels)

    def quality(self) -> Quality | None:
        if not self._pairs:
            return None
        n = self.num_classes
        tp, predicted, actual = [0] * n, [0] * n, [0] * n
        for p, t in self._pairs:
            predicted[p] += 1
            actual[t] += 1
            tp[t] += p == t
        seen = [c for c in range(n) if predicted[c] or actual[c]]
        recall = [tp[c] / actual[c] if actual[c] else 0.0 for c in seen]
        precision = [tp[c] / predicted[c] if predicted[c] else 0.0 for c in seen]
        f1 = [2 * p * r / (p + r) if p + r else 0.0 for p, r in zip(precision, recall, strict=True)]
        return Quality(
            len(self._pairs),
            sum(tp) / len(self._pairs),
            sum(recall) / len(seen),
            sum(f1) / len(seen),
        )
