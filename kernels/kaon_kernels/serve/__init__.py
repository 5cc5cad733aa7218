"""The Open Inference Protocol (V2) REST server for kaon's model artifacts.

`python -m kaon_kernels.serve --model-dir DIR` (settings in `settings`). The layers, bottom up:
`http11` (HTTP/1.1 bytes), `protocol` (V2 infer bodies), `batcher` (dynamic batching on one
worker thread), `model` (the artifact and its forward pass; the only torch user), `metrics`,
`load` (the autoscaling signal), `app` (routes), `server` (asyncio connections), `__main__`.
"""
