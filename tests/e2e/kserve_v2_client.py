"""KServe's own V2 REST client, run in the KServe venv (.venv/kserve) by test_v2_conformance.

    .venv/kserve/bin/python tests/e2e/kserve_v2_client.py URL MODEL INPUTS.json

INPUTS.json holds a list of samples (nested lists of numbers). The client checks the server
(live, ready, model ready), then infers them once with JSON tensors and once with binary tensors,
and prints one JSON line: {"ready": [...], "json": {...}, "binary": {...}}, each answer as
{"id", "model_name", "outputs": {name: nested list}}. For an https:// URL, KAON_CLIENT_CA names
the CA file that verifies the server (absent: not verified); KAON_CLIENT_TOKEN, if set, goes in
`Authorization: Bearer` of every request.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig


def as_dict(response: Any) -> dict[str, Any]:
    return {
        "id": response.id,
        "model_name": response.model_name,
        "outputs": {o.name: o.as_numpy().tolist() for o in response.outputs},
    }


async def main(url: str, model: str, samples: list[Any]) -> dict[str, Any]:
    verify = os.environ.get("KAON_CLIENT_CA") or not url.startswith("https://")
    client = InferenceRESTClient(RESTConfig(protocol="v2", timeout=30, verify=verify))
    token = os.environ.get("KAON_CLIENT_TOKEN")
    headers = {"Authorization": f"Bearer {token}"} if token else None
    x = np.asarray(samples, dtype=np.float32)
    found: dict[str, Any] = {
        "ready": [
            await client.is_server_live(url, headers=headers),
            await client.is_server_ready(url, headers=headers),
            await client.is_model_ready(url, model, headers=headers),
        ]
    }
    for mode in ("json", "binary"):
        tensor = InferInput("input", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x, binary_data=mode == "binary")
        request = InferRequest(model_name=model, infer_inputs=[tensor], request_id=f"kserve-{mode}")
        answer = await client.infer(url, request, model_name=model, headers=headers)
        found[mode] = as_dict(answer)
    await client.close()
    return found


if __name__ == "__main__":
    url, model, inputs = sys.argv[1:4]
    print(json.dumps(asyncio.run(main(url, model, json.loads(Path(inputs).read_text())))))
