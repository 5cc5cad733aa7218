"""Ask a V2 endpoint to read handwritten digits, as any Triton/KServe client would.

    python hack/ask_digits.py HOST:PORT MODEL [N]

Sends N digits of scikit-learn's set (raw 8x8 pixel values, the last N of the set) in one
request with tritonclient's defaults, and prints the labels it got back against the truth.
"""

from __future__ import annotations

import sys

import numpy as np
import tritonclient.http as httpclient
from sklearn.datasets import load_digits  # type: ignore[import-untyped]


def main() -> int:
    url, model = sys.argv[1], sys.argv[2]
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 200
    digits = load_digits()
    images = digits.images[-n:].astype(np.float32)[:, None, :, :]
    truth = digits.target[-n:]
    client = httpclient.InferenceServerClient(url=url)
    print(f"server ready: {client.is_server_ready()}, model ready: {client.is_model_ready(model)}")
    request = httpclient.InferInput("input", list(images.shape), "FP32")
    request.set_data_from_numpy(images)
    labels = client.infer(model, [request]).as_numpy("label")
    assert labels is not None
    right = int((labels == truth).sum())
    print(f"first 20 predicted: {' '.join(map(str, labels[:20]))}")
    print(f"first 20 true:      {' '.join(map(str, truth[:20]))}")
    print(f"{right} of {n} right ({right / n:.1%})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
