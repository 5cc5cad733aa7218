"""Progress into the worker pod's own annotation, where the operator's pod watch sees it.

The pod runs with a service account allowed to patch pods of its namespace. The annotation is
written from a background thread, at most every `min_interval_s` and always for the last record,
so training never waits on the API server; a failed write is reported once and otherwise
ignored (progress is advisory; the final report travels in the termination message).

Environment (set by the operator): `KAON_PROGRESS_ANNOTATION` (the annotation key; the
inference server's load record uses `KAON_LOAD_ANNOTATION`),
`POD_NAME`, `POD_NAMESPACE`, `KUBERNETES_SERVICE_HOST`/`_PORT`, and `KAON_SERVICEACCOUNT_DIR`
(default: the in-cluster token directory).
"""

from __future__ import annotations

import json
import ssl
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

DEFAULT_SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
TIMEOUT_S = 5.0


class PodAnnotator:
    """Keeps one annotation of this pod set to the newest record."""

    def __init__(
        self,
        url: str,
        annotation: str,
        token_file: Path,
        ca_file: Path | None,
        min_interval_s: float = 2.0,
    ) -> None:
        self.url = url
        self.annotation = annotation
        self.token_file = token_file
        self.context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
        self.min_interval_s = min_interval_s
        self._pending: dict[str, Any] | None = None
        self._wake = threading.Condition()
        self._closed = False
        self._warned = False
        self._thread = threading.Thread(target=self._run, name="kaon-progress", daemon=True)
        self._thread.start()

    @classmethod
    def from_env(
        cls,
        env: Mapping[str, str],
        key_var: str = "KAON_PROGRESS_ANNOTATION",
        min_interval_s: float = 2.0,
    ) -> PodAnnotator | None:
        """An annotator when the pod's identity and API credentials are all present.

        The annotation's key is the value of `key_var` (the training progress by default; the
        inference server's load record uses `KAON_LOAD_ANNOTATION`).
        """
        keys = (key_var, "POD_NAME", "POD_NAMESPACE", "KUBERNETES_SERVICE_HOST")
        if not all(env.get(k) for k in keys):
            return None
        sa_dir = Path(env.get("KAON_SERVICEACCOUNT_DIR") or DEFAULT_SA_DIR)
        token = sa_dir / "token"
        if not token.is_file():
            return None
        ca = sa_dir / "ca.crt"
        host = env["KUBERNETES_SERVICE_HOST"]
        host = f"[{host}]" if ":" in host else host
        port = env.get("KUBERNETES_SERVICE_PORT", "443")
        url = (
            f"https://{host}:{port}/api/v1/namespaces/{env['POD_NAMESPACE']}/pods/{env['POD_NAME']}"
        )
        return cls(url, env[key_var], token, ca if ca.is_file() else None, min_interval_s)

    def offer(self, record: dict[str, Any]) -> None:
        """Queue the newest record; older unsent ones are dropped."""
        with self._wake:
            self._pending = record
            self._wake.notify()

    def close(self, timeout_s: float = TIMEOUT_S) -> None:
        """Send what is pending, then stop."""
        with self._wake:
            self._closed = True
            self._wake.notify()
        self._thread.join(timeout_s)

    def _run(self) -> None:
        last = float("-inf")
        while True:
            with self._wake:
                while self._pending is None and not self._closed:
                    self._wake.wait()
                if self._pending is None:
                    return
                if not self._closed:
                    wait = last + self.min_interval_s - time.monotonic()
                    if wait > 0:
                        self._wake.wait(wait)  # a newer record may replace this one meanwhile
                        continue
                record, self._pending = self._pending, None
            last = time.monotonic()
            self._send(record)

    def _send(self, record: dict[str, Any]) -> None:
        body = {"metadata": {"annotations": {self.annotation: json.dumps(record)}}}
        request = urllib.request.Request(
            self.url,
            data=json.dumps(body).encode(),
            method="PATCH",
            headers={
                "Content-Type": "application/merge-patch+json",
                "Authorization": f"Bearer {self.token_file.read_text().strip()}",
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT_S, context=self.context):
                pass
        except (OSError, urllib.error.URLError) as err:
            if not self._warned:
                self._warned = True
                print(f"kaon: progress annotation not written: {err}", file=sys.stderr)
