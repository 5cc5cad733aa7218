"""KServe's own V2 gRPC client, run in the KServe venv (.venv/kserve) by test_serve_grpc.

    .venv/kserve/bin/python tests/e2e/kserve_v2_grpc_client.py HOST:PORT MODEL INPUTS.json

INPUTS.json holds a list of samples (nested lists of numbers). The client checks the server
(live, ready, model ready), then infers them once with `contents` and once with
`raw_input_contents`, and prints one JSON line: {"ready": [...], "contents": {...}, "raw": {...}},
each answer as {"id", "model_name", "outputs": {name: nested list}}. KAON_CLIENT_CA, if set,
names the CA file for a TLS channel; KAON_CLIENT_TOKEN, if set, goes in the `authorization`
metadata of every call as `Bearer TOKEN`.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
from kserve import InferenceGRPCClient, InferInput, InferRequest


def as_dict(response: Any) -> dict[str, Any]:
    return {
        "id": response.id,
        "model_name": response.model_name,
        "outputs": {o.name: o.as_numpy().tolist() for o in response.outputs},
    }


async def main(url: str, model: str, samples: list[Any]) -> dict[str, Any]:
    ca = os.environ.get("KAON_CLIENT_CA")
    client = InferenceGRPCClient(url, use_ssl=bool(ca), root_certificates=ca, timeout=30)
    token = os.environ.get("KAON_CLIENT_TOKEN")
    headers = (("authorization", f"Bearer {token}"),) if token else None
    x = np.asarray(samples, dtype=np.float32)
    found: dict[str, Any] = {
        "ready": [
            await client.is_server_live(headers=headers),
            await client.is_server_ready(headers=headers),
            await client.is_model_ready(model, headers=headers),
        ]
    }
    for mode in ("contents", "raw"):
        tensor = InferInput("input", list(x.shape), "FP32")
        if mode == "raw":
            tensor.set_data_from_numpy(x, binary_data=True)
        else:
            tensor.set_data_from_numpy(x, binary_data=False)
        request = InferRequest(model_name=model, infer_inputs=[tensor], request_id=f"kserve-{mode}")
        answer = await client.infer(request, headers=headers)
        found[mode] = as_dict(answer)
    await client.close()
    return found


if __name__ == "__main__":
    url, model, inputs = sys.argv[1:4]
    print(json.dumps(asyncio.run(main(url, model, json.loads(Path(inputs).read_text())))))
