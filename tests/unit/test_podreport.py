"""The runtime's progress annotation: what it sends, how often, and that it never blocks."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any, ClassVar

from kaon_kernels.podreport import PodAnnotator


class Recorder(BaseHTTPRequestHandler):
    seen: ClassVar[list[tuple[str, str, str, Any]]] = []

    def do_PATCH(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.seen.append(
            (self.path, self.headers["Authorization"], self.headers["Content-Type"], body)
        )
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_from_env_needs_identity_and_a_token(tmp_path: Path) -> None:
    env = {
        "KAON_PROGRESS_ANNOTATION": "kaon.dev/progress",
        "POD_NAME": "p",
        "POD_NAMESPACE": "ns",
        "KUBERNETES_SERVICE_HOST": "127.0.0.1",
        "KAON_SERVICEACCOUNT_DIR": str(tmp_path),
    }
    assert PodAnnotator.from_env(env) is None  # no token file
    (tmp_path / "token").write_text("t")
    assert PodAnnotator.from_env({**env, "POD_NAME": ""}) is None
    annotator = PodAnnotator.from_env(env)
    assert annotator is not None
    assert annotator.url == "https://127.0.0.1:443/api/v1/namespaces/ns/pods/p"
    annotator.close()


def test_only_the_newest_record_is_sent_and_the_last_always_is(tmp_path: Path) -> None:
    Recorder.seen = []
    server = HTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    token = tmp_path / "token"
    token.write_text("secret\n")
    url = f"http://127.0.0.1:{server.server_port}/api/v1/namespaces/ns/pods/p"
    annotator = PodAnnotator(url, "kaon.dev/progress", token, None, min_interval_s=60)
    for step in range(1, 6):
        annotator.offer({"step": step})
    annotator.close()
    server.shutdown()

    sent = [
        json.loads(body["metadata"]["annotations"]["kaon.dev/progress"])
        for *_, body in Recorder.seen
    ]
    assert sent[-1] == {"step": 5}
    assert len(sent) <= 2  # the first, perhaps, then only the newest
    path, auth, content_type, _ = Recorder.seen[-1]
    assert path == "/api/v1/namespaces/ns/pods/p"
    assert auth == "Bearer secret" and content_type == "application/merge-patch+json"
