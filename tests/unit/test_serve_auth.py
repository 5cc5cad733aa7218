"""Bearer tokens: the header, static tokens, JWT audiences, TokenReview verdicts and their memory.

The TokenReview answers come from a local aiohttp server standing in for the API server's
endpoint (tests/integration/test_serve_tokenreview.py asks a real one).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from kaon_kernels.serve.app import App
from kaon_kernels.serve.auth import (
    ALLOWED,
    INVALID,
    MALFORMED,
    NO_TOKEN,
    Authenticator,
    Claims,
    Review,
    ReviewError,
    StaticTokens,
    Verdict,
    jwt_claims,
)
from kaon_kernels.serve.http11 import Request
from kaon_kernels.serve.metrics import ServeMetrics
from kaon_kernels.serve.settings import SettingsError
from kaon_kernels.serve.tokenreview import TOKENREVIEWS, TokenReviewer

AUD = "digits.team"
Answer = tuple[int, dict[str, str], bytes]


def jwt(payload: dict[str, Any]) -> str:
    def part(doc: Any) -> str:
        return base64.urlsafe_b64encode(json.dumps(doc).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'RS256'})}.{part(payload)}.c2lnbmF0dXJl"


def get(path: str, token: str | None = None, scheme: str = "Bearer") -> Request:
    headers = {} if token is None else {"authorization": f"{scheme} {token}"}
    return Request("GET", path, headers, b"", True)


async def ask(app: App, req: Request) -> Answer:
    answered: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()

    def reply(status: int, body: bytes, ctype: str, extra: tuple[tuple[str, str], ...]) -> None:
        answered.set_result((status, dict(extra), body))

    app.handle(req, reply)
    return await asyncio.wait_for(answered, 10)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, NO_TOKEN),
        ("Bearer abc.DEF-_~+/==", ALLOWED),
        ("bearer   abc.DEF-_~+/== ", ALLOWED),
        ("BEARER abc.DEF-_~+/==", ALLOWED),
        ("Bearer other", INVALID),
        ("Basic dXNlcjpwYXNz", MALFORMED),
        ("Bearer", MALFORMED),
        ("Bearer ", MALFORMED),
        ("Bearer a b", MALFORMED),
        ("Bearer abc.DEF-_~+/==, Bearer b", MALFORMED),  # the header given twice
        ("Bearer tok\u00e9n", MALFORMED),
        ("Bearerabc.DEF-_~+/==", MALFORMED),
    ],
)
def test_the_token_comes_from_a_bearer_authorization_header(
    tmp_path: Path, header: str | None, expected: Verdict
) -> None:
    (tmp_path / "client").write_text("abc.DEF-_~+/==")
    auth = Authenticator(StaticTokens(tmp_path, print))
    assert auth.check(header) == expected


def write_secret_volume(directory: Path, version: str, data: dict[str, str]) -> None:
    """What the kubelet does to a Secret volume: the files in a new timestamped directory, the
    `..data` link swapped to it, and a link per key through `..data`."""
    directory.mkdir(exist_ok=True)
    (directory / version).mkdir()
    for key, value in data.items():
        (directory / version / key).write_text(value)
    (directory / "..data_tmp").symlink_to(version)
    os.replace(directory / "..data_tmp", directory / "..data")
    for key in data:
        if not (directory / key).is_symlink():
            (directory / key).symlink_to(f"..data/{key}")
    for old in os.listdir(directory):
        if not old.startswith(".") and old not in data:
            (directory / old).unlink()


def test_static_tokens_let_their_holders_in_and_answer_others_401(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    write_secret_volume(
        tokens,
        "..2024_01",
        {"alice": "alice-token\n", "empty": " \n", "bad": "has a space", "bob": "bob-token"},
    )
    (tokens / ".hidden").write_text("hidden-token")
    said: list[str] = []
    static = StaticTokens(tokens, said.append)
    metrics = ServeMetrics("digits")
    app = App("digits", metrics, auth=Authenticator(static, say=said.append))

    async def scenario() -> None:
        for token in ("alice-token", "bob-token"):
            status, _, body = await ask(app, get("/v2", token))
            assert status == 200 and json.loads(body)["name"] == "kaon"
        for req in (
            get("/v2"),
            get("/v2", "hidden-token"),
            get("/v2", "has"),
            get("/v2/models/digits", "alice-token", scheme="Basic"),
            get("/v2/models/digits/infer", "mallory-token"),
            get("/nowhere", "mallory-token"),  # no route, but first: who asks
        ):
            status, headers, body = await ask(app, req)
            assert (status, headers) == (401, {"WWW-Authenticate": 'Bearer realm="kaon"'}), req
            assert b"-token" not in body and b"has" not in body
        for path in ("/v2/health/live", "/v2/health/ready", "/metrics"):
            assert (await ask(app, get(path)))[0] in (200, 503), path  # ready: no model yet

    asyncio.run(scenario())
    assert static.digests == (
        hashlib.sha256(b"alice-token").digest(),
        hashlib.sha256(b"bob-token").digest(),
    )
    assert said == [f"auth: ignoring {tokens / 'bad'}: not a bearer token (RFC 6750 characters)"]
    text = metrics.exposition().decode()
    assert 'kaon_serve_auth_denied_total{code="401",model="digits"} 6.0' in text
    assert 'kaon_serve_requests_total{code="401",endpoint="server_metadata",model="digits"}' in text
    assert 'kaon_serve_request_errors_total{code="401",endpoint="infer",model="digits"} 1.0' in text
    assert 'kaon_serve_requests_total{code="200",endpoint="live",model="digits"} 1.0' in text
    assert "-token" not in text


def test_static_tokens_follow_the_secret_within_the_reload_interval(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    write_secret_volume(tokens, "..2024_01", {"client": "old-token"})
    clock = Clock()
    static = StaticTokens(tokens, print, interval_s=10.0, clock=clock)
    auth = Authenticator(static)

    def status(token: str) -> int:
        verdict = auth.check(f"Bearer {token}")
        assert isinstance(verdict, Verdict)
        return verdict.status

    assert (status("old-token"), status("new-token")) == (200, 401)
    write_secret_volume(tokens, "..2024_02", {"client": "new-token", "other": "2nd-token"})
    clock.now += 9.0
    assert (status("old-token"), status("new-token")) == (200, 401)  # not looked at yet
    clock.now += 1.0
    assert (status("old-token"), status("new-token"), status("2nd-token")) == (401, 200, 200)
    (tokens / "in-place").write_text("edited-token")  # not a Secret: a file written in place
    clock.now += 10.0
    assert status("edited-token") == 200
    (tokens / "in-place").write_text("edited-again")
    clock.now += 10.0
    assert (status("edited-token"), status("edited-again")) == (401, 200)


def test_jwt_audiences_and_expiry_are_read_without_verification() -> None:
    assert jwt_claims(jwt({"aud": AUD, "exp": 1700000000})) == Claims((AUD,), 1700000000.0)
    many = [f"a{n}" for n in range(10)]
    got = jwt_claims(jwt({"aud": ["x" * 257, 5, "", *many], "exp": True}))
    assert got == Claims(tuple(many[:8]), None)
    assert jwt_claims(jwt({"sub": "me"})) == Claims((), None)
    assert jwt_claims(jwt({"aud": {"not": "a list"}, "exp": 1.5})) == Claims((), 1.5)
    for not_a_jwt in ("opaque-token", "a.b", "a.b.c.d", "a.!!!.c"):
        assert jwt_claims(not_a_jwt) is None, not_a_jwt
    payload = base64.urlsafe_b64encode(b"[1, 2]").decode()
    assert jwt_claims(f"h.{payload}.s") is None
    deep = base64.urlsafe_b64encode(b"[" * 100_000).decode()
    assert jwt_claims(f"h.{deep}.s") is None


class FakeReviewer:
    """Answers from `answers` by token; counts the reviews; waits for `gate` when given one."""

    def __init__(self, answers: dict[str, Review | ReviewError]) -> None:
        self.answers = answers
        self.calls: list[tuple[str, tuple[str, ...]]] = []
        self.gate: asyncio.Event | None = None

    async def review(self, token: str, audiences: Sequence[str]) -> Review:
        self.calls.append((token, tuple(audiences)))
        if self.gate is not None:
            await self.gate.wait()
        answer = self.answers[token]
        if isinstance(answer, ReviewError):
            raise answer
        return answer

    async def close(self) -> None:
        pass


async def verdict_of(auth: Authenticator, token: str) -> Verdict:
    verdict = auth.check(f"Bearer {token}")
    return verdict if isinstance(verdict, Verdict) else await verdict


def test_review_verdicts_are_remembered_by_the_tokens_digest_for_their_time() -> None:
    good = jwt({"aud": [AUD, "other"], "exp": 10_030})
    lasting = jwt({"aud": AUD, "exp": 99_999})
    foreign = jwt({"aud": "other"})
    unknown = jwt({"aud": AUD})
    reviewer = FakeReviewer(
        {
            good: Review(True, (AUD,)),
            lasting: Review(True, (AUD,)),
            foreign: Review(True, ()),
            unknown: Review(False, ()),
        }
    )
    clock = Clock()
    said: list[str] = []
    auth = Authenticator(
        None, reviewer, AUD, said.append, clock=clock, wall=lambda: 10_000.0, max_remembered=3
    )

    def remembered(token: str) -> bool:
        return isinstance(auth.check(f"Bearer {token}"), Verdict)

    async def scenario() -> None:
        assert await verdict_of(auth, good) == ALLOWED
        assert reviewer.calls == [(good, (AUD, "other"))]
        assert auth.check(f"Bearer {good}") == ALLOWED  # no second review
        assert list(auth.remembered) == [hashlib.sha256(good.encode()).digest()]
        assert good not in repr(auth.remembered)
        clock.now += 30.0  # the token's exp comes before the minute
        assert not remembered(good)
        assert await verdict_of(auth, good) == ALLOWED
        assert await verdict_of(auth, lasting) == ALLOWED
        clock.now += 59.0
        assert remembered(lasting)
        clock.now += 1.0
        assert not remembered(lasting)
        assert await verdict_of(auth, lasting) == ALLOWED

        refused = await verdict_of(auth, foreign)
        assert refused.status == 403 and repr(AUD) in refused.message
        assert (await verdict_of(auth, unknown)).status == 401
        assert (await verdict_of(auth, "opaque")).status == 401  # not a JWT: never reviewed
        assert len(reviewer.calls) == 6
        assert len(auth.remembered) == 3  # the oldest (good, lasting) were dropped
        assert not remembered(good)
        assert await verdict_of(auth, good) == ALLOWED
        clock.now += 9.0
        assert auth.check(f"Bearer {unknown}") == INVALID
        clock.now += 1.0
        assert not remembered(unknown)
        assert (await verdict_of(auth, unknown)).status == 401

    asyncio.run(scenario())
    assert not said


def test_concurrent_requests_with_a_new_token_share_one_review_and_503_is_not_remembered() -> None:
    token = jwt({"aud": AUD})
    reviewer = FakeReviewer({token: ReviewError("TokenReview failed: ClientConnectorError")})
    said: list[str] = []
    metrics = ServeMetrics("digits")
    app = App("digits", metrics, auth=Authenticator(None, reviewer, AUD, said.append))

    async def scenario() -> None:
        reviewer.gate = asyncio.Event()
        asked = [asyncio.ensure_future(ask(app, get("/v2", token))) for _ in range(5)]
        await asyncio.sleep(0.01)
        assert not app.idle.is_set() and app.authenticating == 5
        reviewer.gate.set()
        for status, headers, body in await asyncio.gather(*asked):
            assert (status, headers) == (503, {"Retry-After": "1"})
            assert "retry" in json.loads(body)["error"]
        assert len(reviewer.calls) == 1 and app.idle.is_set()
        assert (await ask(app, get("/v2", token)))[0] == 503
        assert len(reviewer.calls) == 2  # not remembered
        reviewer.answers[token] = Review(True, (AUD,))
        assert (await ask(app, get("/v2", token)))[0] == 200
        assert (await ask(app, get("/v2", token)))[0] == 200
        assert len(reviewer.calls) == 3

    asyncio.run(scenario())
    assert said == [
        "auth: answering 503 until the API server reviews tokens: "
        "TokenReview failed: ClientConnectorError",
        "auth: the API server reviews tokens again",
    ]
    text = metrics.exposition().decode()
    assert 'kaon_serve_auth_denied_total{code="503",model="digits"} 6.0' in text
    assert (
        'kaon_serve_requests_total{code="200",endpoint="server_metadata",model="digits"} 2.0'
        in (text)
    )


Behaviour = Callable[[web.Request, dict[str, Any]], Any]


@asynccontextmanager
async def api_server(behaviour: Behaviour) -> AsyncIterator[str]:
    """A local HTTP server answering TokenReview with `behaviour(request, body)`; its URL."""

    async def tokenreviews(request: web.Request) -> web.StreamResponse:
        answer = behaviour(request, await request.json())
        if asyncio.iscoroutine(answer):
            answer = await answer
        assert isinstance(answer, web.StreamResponse)
        return answer

    app = web.Application()
    app.router.add_post(TOKENREVIEWS, tokenreviews)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}{TOKENREVIEWS}"
    finally:
        await runner.cleanup()


def test_token_review_verdicts_from_the_api_servers_answers(tmp_path: Path) -> None:
    sa_token = tmp_path / "token"
    sa_token.write_text("reviewer-1\n")
    good, foreign, unknown = (jwt({"aud": aud, "n": n}) for n, aud in enumerate([AUD, "x", AUD]))
    failing, slow, odd = (jwt({"aud": AUD, "n": n}) for n in range(3, 6))
    seen: list[tuple[str, list[str]]] = []

    async def behaviour(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        assert body["apiVersion"] == "authentication.k8s.io/v1" and body["kind"] == "TokenReview"
        token, audiences = body["spec"]["token"], body["spec"]["audiences"]
        seen.append((request.headers["Authorization"], audiences))
        if token == failing:
            return web.json_response({"kind": "Status"}, status=500)
        if token == slow:
            await asyncio.sleep(1.0)
        if token == odd:
            return web.Response(text="<html>proxy</html>", content_type="text/html")
        known = {good: [AUD], foreign: []}
        status: dict[str, Any] = {"authenticated": token in known}
        if token in known:
            status |= {"user": {"username": "system:serviceaccount:team:client"}}
            status |= {"audiences": known[token]}
        else:
            status |= {"error": "[invalid bearer token, token lookup failed]"}
        return web.json_response(body | {"status": status}, status=201)

    said: list[str] = []

    async def scenario() -> None:
        async with api_server(behaviour) as url:
            reviewer = TokenReviewer(url, sa_token, None, timeout_s=0.3)
            auth = Authenticator(None, reviewer, AUD, said.append)

            async def status_of(token: str) -> int:
                verdict = auth.check(f"Bearer {token}")
                return (verdict if isinstance(verdict, Verdict) else await verdict).status

            assert await status_of(good) == 200
            assert seen[-1] == ("Bearer reviewer-1", [AUD])
            sa_token.write_text("reviewer-2")  # the kubelet rotated the pod's token
            assert await status_of(foreign) == 403
            assert seen[-1] == ("Bearer reviewer-2", [AUD, "x"])
            assert await status_of(unknown) == 401
            assert [await status_of(t) for t in (failing, slow, odd)] == [503, 503, 503]
            await auth.close()
        assert await status_of(failing) == 503  # nobody listens any more
        await auth.close()

    asyncio.run(scenario())
    assert said == [
        "auth: answering 503 until the API server reviews tokens: TokenReview answered 500"
    ]
    assert not any(t in line for line in said for t in (good, slow, odd, "reviewer-"))


def test_a_review_refused_to_this_pod_says_what_it_needs(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("reviewer")

    def refuse(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        return web.json_response({"kind": "Status", "code": 403}, status=403)

    async def scenario() -> str:
        async with api_server(refuse) as url:
            reviewer = TokenReviewer(url, tmp_path / "token", None)
            try:
                await reviewer.review(jwt({"aud": AUD}), [AUD])
            except ReviewError as err:
                return str(err)
            finally:
                await reviewer.close()
        raise AssertionError("no ReviewError")

    assert "403" in (message := asyncio.run(scenario()))
    assert "system:auth-delegator" in message


def test_the_reviewer_finds_the_api_server_as_a_pod_does(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("t")
    env = {
        "KUBERNETES_SERVICE_HOST": "fd00::1",
        "KUBERNETES_SERVICE_PORT": "6443",
        "KAON_SERVICEACCOUNT_DIR": str(tmp_path),
    }
    reviewer = TokenReviewer.from_env(env)
    assert reviewer.url == f"https://[fd00::1]:6443{TOKENREVIEWS}"
    assert reviewer.token_file == tmp_path / "token"
    with pytest.raises(SettingsError, match="KUBERNETES_SERVICE_HOST is not set"):
        TokenReviewer.from_env({})
    with pytest.raises(SettingsError, match="no ServiceAccount token at"):
        TokenReviewer.from_env(env | {"KAON_SERVICEACCOUNT_DIR": str(tmp_path / "none")})
