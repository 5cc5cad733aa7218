"""The served model: a TrainingJob's artifact, its V2 signature, and one batched forward pass.

Input `input` (FP32, `[-1, *inputShape]`) takes raw values as the training data had them (for
digits: 8x8 pixel intensities 0..16); the artifact's normalisation is applied here. Outputs:
`logits` (FP32 `[-1, numClasses]`), `probabilities` (FP32 `[-1, numClasses]`, softmax of the
logits) and `label` (INT64 `[-1]`, the arg-max class).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from kaon_kernels import reference
from kaon_kernels.artifact import load_artifact
from kaon_kernels.models import fuse_for_inference
from kaon_kernels.serve.batcher import Part
from kaon_kernels.serve.monitor import DriftMonitor
from kaon_kernels.serve.protocol import (
    BatchResult,
    InferRequest,
    OutputRows,
    Signature,
    TensorSpec,
)

VERSION = "1"
PLATFORM = "pytorch"


class Engine:
    """Loads the artifact once; `run` is called on the batcher's worker thread only."""

    def __init__(self, model_dir: Path, name: str) -> None:
        model, meta = load_artifact(model_dir)
        self.family = str(meta["model"]["family"])
        self.model = fuse_for_inference(model)
        self.sample_shape = tuple(int(d) for d in meta["input_shape"])
        classes = self.num_classes = int(meta["num_classes"])
        ref = reference.load(model_dir)
        # An artifact from before references were kept is served without drift.
        self.monitor = DriftMonitor(ref) if ref is not None else None
        self.mean = float(meta["normalization"]["mean"])
        self.std = float(meta["normalization"]["std"])
        self.signature = Signature(
            model_name=name,
            version=VERSION,
            input=TensorSpec("input", "FP32", (-1, *self.sample_shape)),
            outputs=(
                TensorSpec("logits", "FP32", (-1, classes)),
                TensorSpec("probabilities", "FP32", (-1, classes)),
                TensorSpec("label", "INT64", (-1,)),
            ),
        )

    def metadata(self) -> dict[str, Any]:
        sig = self.signature
        return {
            "name": sig.model_name,
            "versions": [sig.version],
            "platform": PLATFORM,
            "inputs": [sig.input.metadata()],
            "outputs": [o.metadata() for o in sig.outputs],
            "parameters": {"family": self.family},
        }

    def run(self, parts: Sequence[Part[InferRequest]]) -> BatchResult:
        """One forward pass over the parts' samples, concatenated in order."""
        size = self.signature.sample_size
        buf = bytearray()
        for part in parts:
            buf += memoryview(part.payload.values)[part.start * size : part.stop * size]
        x = torch.frombuffer(buf, dtype=torch.float32).reshape(-1, *self.sample_shape)
        return self.forward(x)

    def forward(self, x: torch.Tensor) -> BatchResult:
        bad: frozenset[int] = frozenset()
        with torch.inference_mode():
            finite = torch.isfinite(x).flatten(1).all(1)
            if not bool(finite.all()):
                bad = frozenset(int(i) for i in (~finite).nonzero().flatten())
                x = torch.where(finite.reshape(-1, *([1] * (x.dim() - 1))), x, 0.0)
            logits = self.model((x - self.mean) / self.std).float()
            probs = torch.softmax(logits, dim=1)
            label = logits.argmax(dim=1)
        if self.monitor is not None:
            self.monitor.observe(x, label)
        return BatchResult(
            {
                "logits": _rows(logits),
                "probabilities": _rows(probs),
                "label": _rows(label),
            },
            bad,
        )

    def warm_up(self, max_batch: int) -> None:
        """Forward passes at the largest and the smallest batch, before the server is ready."""
        monitor, self.monitor = self.monitor, None  # zeros are not traffic
        try:
            for n in (max_batch, 1):
                self.forward(torch.zeros(n, *self.sample_shape))
        finally:
            self.monitor = monitor


def _rows(t: torch.Tensor) -> OutputRows:
    n = t.shape[0]
    raw = t.contiguous().numpy().tobytes()
    return OutputRows(t.tolist(), raw, len(raw) // n if n else 0)
