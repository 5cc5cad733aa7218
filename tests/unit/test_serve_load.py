"""The autoscaling load record: its window arithmetic, and its way into the pod's annotation."""

from __future__ import annotations

import asyncio
import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any, ClassVar

from kaon_kernels.podreport import PodAnnotator
from kaon_kernels.serve.load import MAX_SAMPLES, LoadReporter, LoadWindow


def test_window_turns_latencies_into_inflight_rate_median_and_queue_time() -> None:
    window = LoadWindow(start=100.0)
    for latency, queued in [(0.010, 0.002), (0.030, 0.004), (0.020, 0.0), (0.040, 0.002)]:
        window.observe(latency, queued)
    record = window.snapshot(now=102.0, wall=1_700_000_000.7, ready=True)
    assert record == {
        "ts": 1_700_000_000,
        "inflight": 0.05,  # 0.1 s of requests over 2 s: 0.05 requests in the server on average
        "rps": 2.0,
        "p50Ms": 25.0,
        "queueMs": 2.0,
        "ready": True,
    }
    assert len(json.dumps(record)) <= 512
    idle = window.snapshot(now=107.0, wall=1_700_000_005.0, ready=False)
    assert idle == {
        "ts": 1_700_000_005,
        "inflight": 0.0,
        "rps": 0.0,
        "p50Ms": 0.0,
        "queueMs": 0.0,
        "ready": False,
    }


def test_the_median_comes_from_a_bounded_uniform_sample() -> None:
    window = LoadWindow(start=0.0)
    for i in range(20_000):
        window.observe(i / 20_000, 0.0)
    assert len(window.sample) == MAX_SAMPLES and window.count == 20_000
    record = window.snapshot(now=10.0, wall=0.0, ready=True)
    assert record["rps"] == 2000.0
    assert 450 < record["p50Ms"] < 550  # the true median is 500 ms


def test_the_annotation_key_comes_from_the_variable_the_caller_names(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("t")
    env = {
        "KAON_PROGRESS_ANNOTATION": "kaon.dev/progress",
        "POD_NAME": "p",
        "POD_NAMESPACE": "ns",
        "KUBERNETES_SERVICE_HOST": "10.0.0.1",
        "KAON_SERVICEACCOUNT_DIR": str(tmp_path),
    }
    assert PodAnnotator.from_env(env, "KAON_LOAD_ANNOTATION") is None
    annotator = PodAnnotator.from_env(
        {**env, "KAON_LOAD_ANNOTATION": "kaon.dev/load"}, "KAON_LOAD_ANNOTATION"
    )
    assert annotator is not None and annotator.annotation == "kaon.dev/load"
    annotator.close()
    loop = asyncio.new_event_loop()
    assert LoadReporter.from_env(env, loop, lambda: True) is None  # not asked for: off
    loop.close()


class Recorder(BaseHTTPRequestHandler):
    seen: ClassVar[list[dict[str, Any]]] = []

    def do_PATCH(self) -> None:
        self.seen.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_the_reporter_writes_each_window_and_a_last_not_ready_record(tmp_path: Path) -> None:
    Recorder.seen = []
    server = HTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    (tmp_path / "token").write_text("t")
    url = f"http://127.0.0.1:{server.server_port}/api/v1/namespaces/ns/pods/p"
    annotator = PodAnnotator(url, "kaon.dev/load", tmp_path / "token", None, min_interval_s=0)

    async def serve_a_while() -> None:
        reporter = LoadReporter(asyncio.get_running_loop(), annotator, lambda: True, 0.05)
        for _ in range(6):
            reporter.window.observe(0.01, 0.001)
            await asyncio.sleep(0.05)
        reporter.close()

    asyncio.run(serve_a_while())
    server.shutdown()
    records = [json.loads(b["metadata"]["annotations"]["kaon.dev/load"]) for b in Recorder.seen]
    assert records and set(records[0]) == {"ts", "inflight", "rps", "p50Ms", "queueMs", "ready"}
    assert any(r["rps"] > 0 and r["ready"] for r in records[:-1])
    assert records[-1]["ready"] is False
