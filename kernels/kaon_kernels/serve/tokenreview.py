"""Kubernetes TokenReview: is a bearer token a valid ServiceAccount token, for which audiences.

`POST /apis/authentication.k8s.io/v1/tokenreviews` on the member's API server, as the pod's own
ServiceAccount (`KAON_SERVICEACCOUNT_DIR`, default the in-cluster token directory); the API
server authenticates a token whose audiences meet the requested ones, and answers that
intersection. Any failure to get an answer, in `REVIEW_TIMEOUT_S` at most, is a `ReviewError`.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping, Sequence
from pathlib import Path

import aiohttp

from kaon_kernels.serve.auth import Review, ReviewError
from kaon_kernels.serve.settings import SettingsError

DEFAULT_SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
TOKENREVIEWS = "/apis/authentication.k8s.io/v1/tokenreviews"
REVIEW_TIMEOUT_S = 5.0


class TokenReviewer:
    """TokenReview on the API server, as this pod's ServiceAccount (bound to the ClusterRole
    `system:auth-delegator`); its token file is read at each review (the kubelet rotates it)."""

    def __init__(
        self,
        url: str,
        token_file: Path,
        ca_file: Path | None,
        timeout_s: float = REVIEW_TIMEOUT_S,
    ) -> None:
        self.url = url
        self.token_file = token_file
        self.tls = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
        self.timeout_s = timeout_s
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> TokenReviewer:
        host = env.get("KUBERNETES_SERVICE_HOST")
        if not host:
            raise SettingsError(
                "--auth-audience: KUBERNETES_SERVICE_HOST is not set (TokenReview needs the "
                "Kubernetes API: run in a pod)"
            )
        sa_dir = Path(env.get("KAON_SERVICEACCOUNT_DIR") or DEFAULT_SA_DIR)
        token, ca = sa_dir / "token", sa_dir / "ca.crt"
        if not token.is_file():
            raise SettingsError(f"--auth-audience: no ServiceAccount token at {token}")
        host = f"[{host}]" if ":" in host else host
        port = env.get("KUBERNETES_SERVICE_PORT", "443")
        return cls(f"https://{host}:{port}{TOKENREVIEWS}", token, ca if ca.is_file() else None)

    async def review(self, token: str, audiences: Sequence[str]) -> Review:
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": {"token": token, "audiences": list(audiences)},
        }
        try:
            own = self.token_file.read_text().strip()
            if self._session is None:
                self._session = aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(ssl=self.tls),
                    timeout=aiohttp.ClientTimeout(total=self.timeout_s),
                )
            headers = {"Authorization": f"Bearer {own}"}
            async with self._session.post(self.url, json=body, headers=headers) as answer:
                if answer.status in (401, 403):
                    raise ReviewError(
                        f"TokenReview answered {answer.status}: is this pod's ServiceAccount "
                        "bound to the ClusterRole system:auth-delegator?"
                    )
                if answer.status not in (200, 201):
                    raise ReviewError(f"TokenReview answered {answer.status}")
                doc = await answer.json()
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as err:
            raise ReviewError(f"TokenReview failed: {type(err).__name__}: {err}") from None
        status = doc.get("status") if isinstance(doc, dict) else None
        if not isinstance(status, dict):
            raise ReviewError("TokenReview answered without a status")
        audiences = status.get("audiences") or []
        return Review(
            status.get("authenticated") is True,
            tuple(a for a in audiences if isinstance(a, str)),
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
