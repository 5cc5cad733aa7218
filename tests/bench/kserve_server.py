"""The serving bench's baseline: KServe's ModelServer serving a kaon artifact, as users write it.

A `kserve.Model` whose `predict` runs the same torch model as `kaon_kernels.serve` (the same
artifact, the same folded conv blocks, the same normalisation, the same outputs: logits,
probabilities and label) on its V2 REST endpoint, with KServe's default server settings (one
uvicorn worker, gRPC on, latency logging on). Runs in the KServe venv (`make setup` builds
.venv/kserve), which sees kaon_kernels and torch from .venv:

    .venv/kserve/bin/python tests/bench/kserve_server.py --model-dir DIR --name digits \
        --http_port 8080 --grpc_port 8081 [--threads 1]
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import kserve
import torch
from kserve import InferOutput, InferRequest, InferResponse
from kserve.utils.utils import generate_uuid

from kaon_kernels.artifact import load_artifact
from kaon_kernels.models import fuse_for_inference


class KaonModel(kserve.Model):
    def __init__(self, name: str, model_dir: Path) -> None:
        super().__init__(name)
        self.model_dir = model_dir
        self.load()

    def load(self) -> bool:
        model, meta = load_artifact(self.model_dir)
        self.net = fuse_for_inference(model)
        self.shape = tuple(meta["input_shape"])
        self.mean = float(meta["normalization"]["mean"])
        self.std = float(meta["normalization"]["std"])
        self.predict(_zeros(self.shape), None)  # warm up, as kaon's server does
        self.ready = True
        return True

    def predict(self, payload: InferRequest, headers: dict[str, str] | None = None) -> Any:
        x = torch.from_numpy(payload.inputs[0].as_numpy()).float().reshape(-1, *self.shape)
        with torch.inference_mode():
            logits = self.net((x - self.mean) / self.std)
            probs = torch.softmax(logits, dim=1)
            label = logits.argmax(dim=1)
        n, classes = logits.shape
        return InferResponse(
            response_id=payload.id or generate_uuid(),
            model_name=self.name,
            infer_outputs=[
                InferOutput("logits", [n, classes], "FP32", data=logits.numpy()),
                InferOutput("probabilities", [n, classes], "FP32", data=probs.numpy()),
                InferOutput("label", [n], "INT64", data=label.numpy()),
            ],
        )


def _zeros(shape: tuple[int, ...]) -> InferRequest:
    tensor = kserve.InferInput("input", [1, *shape], "FP32")
    tensor.set_data_from_numpy(torch.zeros(1, *shape).numpy(), binary_data=False)
    return InferRequest(model_name="warmup", infer_inputs=[tensor], request_id="warmup")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--threads", type=int, default=1)
    args, _ = parser.parse_known_args()  # --http_port/--grpc_port are read by kserve itself
    torch.set_num_threads(args.threads)
    kserve.ModelServer().start([KaonModel(args.name, Path(args.model_dir))])


if __name__ == "__main__":
    main()
