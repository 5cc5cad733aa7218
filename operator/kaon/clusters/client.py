"""An async client for one Kubernetes API server (aiohttp), built from a kubeconfig.

`kubeconfig.credentials` reads the kubeconfig (files or inline data, certs, tokens, exec
plugins); requests, watches and connection pooling are ours, so one operator process keeps one
cheap client per member cluster.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any, cast

import aiohttp
import orjson
import yaml
from pydantic_core import from_json, to_jsonable_python

from kaon.clusters.kubeconfig import credentials

Obj = dict[str, Any]
MERGE_PATCH = "application/merge-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"


class ApiError(Exception):
    """An API server answered with an error status (or could not be reached: status 0)."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}" if status else f"{reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message

    @property
    def not_found(self) -> bool:
        return self.status == 404

    @property
    def conflict(self) -> bool:
        return self.status == 409

    @property
    def unauthorized(self) -> bool:
        return self.status in (401, 403)


class WatchExpiredError(Exception):
    """The watch's resourceVersion is too old (410 Gone): list again."""


# Each open TLS connection holds asyncio's 256 KiB read buffer (cpython #109534). After a burst
# the pools kept ~340 of them open, 44 MiB of the operator at 1000 jobs (tracemalloc, bench):
# idle ones are closed after a few seconds; a new TLS handshake to a member costs milliseconds.
IDLE_CONNECTION_S = 3.0


# Bodies are written with orjson (about 6x faster than pydantic_core). Answers and watch events
# are read with pydantic_core: orjson decodes a 5 KB pod event in 44 µs against 80 µs, but
# pydantic_core's string cache shares the strings that thousands of cached pods and jobs repeat;
# with orjson the operator held 139 MiB at 1000 jobs instead of 116-130 MiB.
def _dumps(body: Any) -> bytes:
    """A request body; a value orjson does not know (a pydantic model) goes through pydantic."""
    return orjson.dumps(body, default=to_jsonable_python)


class KubeClient:
    def __init__(self, kubeconfig: Mapping[str, Any], max_connections: int = 64) -> None:
        creds = credentials(kubeconfig)
        self.server: str = creds.server
        self._kubeconfig = kubeconfig
        self._token = creds.token
        self._headers = {"Accept": "application/json"}
        self._ssl = creds.ssl
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    def from_file(cls, path: Path | str, **kw: Any) -> KubeClient:
        return cls(yaml.safe_load(Path(path).read_text()), **kw)

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=self._max_connections,
                    ssl=self._ssl,
                    keepalive_timeout=IDLE_CONNECTION_S,
                ),
                headers=self._headers,
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def _auth(self, headers: dict[str, str]) -> dict[str, str]:
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        return headers

    async def _refreshed_token(self) -> bool:
        """After a 401: read the credentials again; True if the token changed.

        Projected ServiceAccount tokens (`tokenFile`, in-cluster) are rotated by the kubelet and
        exec plugins hand out short-lived ones: a long-running operator must pick up the new one.
        """
        try:
            creds = await asyncio.to_thread(credentials, self._kubeconfig)
        except Exception:  # the same credentials error will surface as the 401 itself
            return False
        if creds.token == self._token:
            return False
        self._token = creds.token
        return True

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: Mapping[str, str] | None = None,
        content_type: str = "application/json",
        timeout_s: float = 30.0,
        answer: bool = True,
    ) -> Obj:
        """The decoded answer; {} when `answer` is False (a created pod is ~8 KB of JSON that
        the member's watch delivers anyway: decoding it again costs CPU at thousands of pods)."""
        data = None
        headers = {}
        if body is not None:
            data = _dumps(body) if not isinstance(body, str) else body
            headers["Content-Type"] = content_type
        text = await self._send(method, path, data, params, headers, timeout_s, answer)
        return cast(Obj, from_json(text)) if text else {}

    async def text(self, path: str) -> str:
        """A plain-text answer, such as the server's own `/metrics`."""
        return await self._send("GET", path, None, None, {"Accept": "text/plain"}, 30.0, True)

    async def _send(
        self,
        method: str,
        path: str,
        data: str | bytes | None,
        params: Mapping[str, str] | None,
        headers: dict[str, str],
        timeout_s: float,
        answer: bool,
    ) -> str:
        """The answer's text ("" unless `answer` or an error); after a 401, once more with the
        credentials read again; an error status raised as ApiError."""
        for retry in (False, True):
            try:
                async with self.session.request(
                    method,
                    self.server + path,
                    data=data,
                    params=params,
                    headers=self._auth(headers),
                    timeout=aiohttp.ClientTimeout(total=timeout_s),
                ) as resp:
                    status = resp.status
                    if answer or status >= 400:
                        text = await resp.text()
                    else:  # read, not decoded: an unread body would close the connection
                        await resp.read()
                        text = ""
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                reason = f"{self.server}: {exc or type(exc).__name__}"
                raise ApiError(0, "Unreachable", reason) from exc
            if status == 401 and not retry and await self._refreshed_token():
                continue
            if status >= 400:
                raise _api_error(status, text)
            break
        return text

    async def get(self, path: str, **params: str) -> Obj:
        return await self.request("GET", path, params=params or None)

    async def create(self, path: str, body: Obj, answer: bool = True) -> Obj:
        return await self.request("POST", path, body=body, answer=answer)

    async def merge_patch(self, path: str, patch: Obj) -> Obj:
        return await self.request("PATCH", path, body=patch, content_type=MERGE_PATCH)

    async def delete(self, path: str, **params: str) -> Obj:
        return await self.request("DELETE", path, params=params or None)

    async def delete_if_present(self, path: str, **params: str) -> bool:
        try:
            await self.delete(path, **params)
            return True
        except ApiError as exc:
            if exc.not_found:
                return False
            raise

    async def create_or_get(self, path: str, body: Obj) -> Obj:
        """Create; if an object of that name exists, return it (idempotent create)."""
        try:
            return await self.create(path, body)
        except ApiError as exc:
            if not exc.conflict:
                raise
            return await self.get(f"{path}/{body['metadata']['name']}")

    async def watch(
        self,
        path: str,
        resource_version: str,
        params: Mapping[str, str] | None = None,
        timeout_s: int = 300,
    ) -> AsyncIterator[tuple[str, Obj]]:
        """Stream (type, object) events after resource_version until the server ends the watch."""
        query = {
            "watch": "1",
            "resourceVersion": resource_version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(timeout_s),
            **(params or {}),
        }
        try:
            async with self.session.get(
                self.server + path,
                params=query,
                headers=self._auth({}),
                timeout=aiohttp.ClientTimeout(
                    total=None, sock_connect=10, sock_read=timeout_s + 30
                ),
            ) as resp:
                if resp.status >= 400:
                    if resp.status == 401:
                        await self._refreshed_token()  # the watch is started again with it
                    raise _api_error(resp.status, await resp.text())
                async for line in resp.content:
                    if not line.strip():
                        continue
                    event = from_json(line)  # pod events are most of the operator's CPU
                    if event["type"] == "ERROR":
                        status = event["object"]
                        if status.get("code") == 410:
                            raise WatchExpiredError(status.get("message", ""))
                        raise ApiError(
                            int(status.get("code", 500)), status.get("reason", ""), str(status)
                        )
                    yield event["type"], event["object"]
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise ApiError(0, "Unreachable", f"{self.server}: {exc or type(exc).__name__}") from exc

    async def version(self) -> str:
        info = await self.request("GET", "/version", timeout_s=5.0)
        return str(info.get("gitVersion", ""))


def _api_error(status: int, text: str) -> Exception:
    try:
        body = json.loads(text)
        reason, message = body.get("reason", ""), body.get("message", text)
    except ValueError:
        reason, message = "", text
    if status == 410:
        return WatchExpiredError(message)
    return ApiError(status, reason, message)


async def sleep_backoff(attempt: int, cap_s: float = 10.0) -> None:
    await asyncio.sleep(min(cap_s, 0.2 * 2 ** min(attempt, 8)))
