"""Who may call the server: bearer tokens, static ones or Kubernetes ServiceAccount ones (off
unless `--auth-tokens-dir` or `--auth-audience` is given).

A request carries its token in `Authorization: Bearer <token>`; the probes' and Prometheus'
paths (`EXEMPT`) need none. A token is allowed if it is one of the static tokens (the files of
a mounted Secret, read again when they change) or, with an audience, if the member API server's
TokenReview authenticates it for that audience. Otherwise the answer is 401 (no token, a
malformed header, a token nobody issued), 403 (a valid ServiceAccount token issued for other
audiences) or 503 with `Retry-After` (the API server could not be asked; not remembered).

TokenReview verdicts are remembered by the token's SHA-256 (allowed: a minute at most and never
past the token's `exp`; refused: 10 s), so a client's later requests cost a hash and a dict
lookup; concurrent requests with the same new token share one review. Tokens themselves are
never kept, logged or answered.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import re
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from kaon_kernels.serve.settings import Settings

EXEMPT = frozenset({"/v2/health/live", "/v2/health/ready", "/metrics"})
RELOAD_INTERVAL_S = 10.0
ALLOW_TTL_S = 60.0
DENY_TTL_S = 10.0
MAX_REMEMBERED = 4096
MAX_CLAIMED_AUDIENCES = 8
MAX_AUDIENCE_CHARS = 256
_TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")  # RFC 6750's b64token

Say = Callable[[str], None]


def _stderr(message: str) -> None:
    print(f"kaon-serve: {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True, slots=True)
class Verdict:
    status: int  # 200: allowed
    message: str = ""
    headers: tuple[tuple[str, str], ...] = ()

    @property
    def allowed(self) -> bool:
        return self.status == 200


_CHALLENGE = (("WWW-Authenticate", 'Bearer realm="kaon"'),)
ALLOWED = Verdict(200)
NO_TOKEN = Verdict(401, "this server needs a token: Authorization: Bearer <token>", _CHALLENGE)
MALFORMED = Verdict(401, "malformed Authorization header: expected Bearer <token>", _CHALLENGE)
INVALID = Verdict(401, "the bearer token is not valid", _CHALLENGE)
UNAVAILABLE = Verdict(
    503,
    "the token cannot be checked now (the Kubernetes API did not answer); retry",
    (("Retry-After", "1"),),
)


def bearer_token(header: str | None) -> str | Verdict:
    """The token of an `Authorization` header, else the verdict on a missing or malformed one.

    Its characters are not checked here (`well_formed`): a remembered or static token was."""
    if header is None:
        return NO_TOKEN
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return MALFORMED
    return token


def well_formed(token: str) -> bool:
    return _TOKEN.fullmatch(token) is not None


def digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class StaticTokens:
    """The tokens held by the files of `directory` (a mounted Secret: one token a key), read
    again when the directory or a file changes, looked at every `interval_s` at most."""

    def __init__(
        self,
        directory: Path,
        say: Say,
        interval_s: float = RELOAD_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.directory = directory
        self.say = say
        self.interval_s = interval_s
        self.clock = clock
        self.digests: tuple[bytes, ...] = ()
        self._stamp: object = None
        self._failing = False
        self._next_look = float("-inf")

    def accepts(self, token_digest: bytes) -> bool:
        if self.clock() >= self._next_look:
            self.refresh()
        found = False
        for known in self.digests:  # all of them: the time taken tells nothing
            found |= hmac.compare_digest(known, token_digest)
        return found

    def refresh(self) -> None:
        self._next_look = self.clock() + self.interval_s
        try:
            stamp = self._stat()
            if stamp == self._stamp:
                return
            digests = self._read()
        except OSError as err:
            if not self._failing:
                self._failing = True
                self.say(f"auth: keeping the static tokens read before: {err}")
            return
        self._stamp, self.digests, self._failing = stamp, digests, False

    def _files(self) -> list[os.DirEntry[str]]:
        # Kubernetes' own entries (`..data` and the timestamped directories) start with a dot.
        with os.scandir(self.directory) as entries:
            return sorted(
                (e for e in entries if not e.name.startswith(".") and e.is_file()),
                key=lambda e: e.name,
            )

    def _stat(self) -> object:
        # The directory's mtime catches a Secret update (its `..data` link is swapped), the
        # files' own stamps a file rewritten in place.
        files = tuple((e.name, *_stamp(os.stat(e.path))) for e in self._files())
        return os.stat(self.directory).st_mtime_ns, files

    def _read(self) -> tuple[bytes, ...]:
        found = []
        for entry in self._files():
            token = Path(entry.path).read_bytes().strip().decode("latin-1")
            if not token:
                continue
            if not well_formed(token):
                self.say(f"auth: ignoring {entry.path}: not a bearer token (RFC 6750 characters)")
                continue
            found.append(digest(token))
        return tuple(found)


def _stamp(st: os.stat_result) -> tuple[int, int, int]:
    return st.st_ino, st.st_mtime_ns, st.st_size


@dataclass(frozen=True, slots=True)
class Claims:
    audiences: tuple[str, ...]
    expires: float | None  # `exp`, Unix seconds


def jwt_claims(token: str) -> Claims | None:
    """A JWT's `aud` (at most 8, each at most 256 characters) and `exp`, read without checking
    the signature (the API server checks it); None if the token is not a JWT."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, RecursionError):
        return None
    if not isinstance(payload, dict):
        return None
    aud = payload.get("aud")
    listed = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
    audiences = tuple(a for a in listed if isinstance(a, str) and 0 < len(a) <= MAX_AUDIENCE_CHARS)
    exp = payload.get("exp")
    expires = float(exp) if isinstance(exp, int | float) and not isinstance(exp, bool) else None
    return Claims(audiences[:MAX_CLAIMED_AUDIENCES], expires)


@dataclass(frozen=True, slots=True)
class Review:
    authenticated: bool
    audiences: tuple[str, ...]  # the requested ones the token is valid for


class ReviewError(Exception):
    """The API server could not review the token (unreachable, refused, failed or slow)."""


class Reviewer(Protocol):
    async def review(self, token: str, audiences: Sequence[str]) -> Review: ...

    async def close(self) -> None: ...


class Authenticator:
    """Verdicts on requests' tokens: at once when known (`check`), else a future one."""

    def __init__(
        self,
        static: StaticTokens | None,
        reviewer: Reviewer | None = None,
        audience: str | None = None,
        say: Say = _stderr,
        allow_ttl_s: float = ALLOW_TTL_S,
        deny_ttl_s: float = DENY_TTL_S,
        max_remembered: int = MAX_REMEMBERED,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        assert (reviewer is None) == (audience is None)
        self.static = static
        self.reviewer = reviewer
        self.audience = audience or ""
        self.say = say
        self.allow_ttl_s = allow_ttl_s
        self.deny_ttl_s = deny_ttl_s
        self.max_remembered = max_remembered
        self.clock = clock
        self.wall = wall
        self.wrong_audience = Verdict(
            403, f"the token is valid but not issued for the audience {self.audience!r}"
        )
        self.remembered: dict[bytes, tuple[Verdict, float]] = {}  # SHA-256 -> (verdict, until)
        self._reviewing: dict[bytes, asyncio.Task[Verdict]] = {}
        self._unavailable = False

    def check(self, header: str | None) -> Verdict | asyncio.Future[Verdict]:
        """The verdict on a request's `Authorization` header, or a future one (a new token)."""
        token = bearer_token(header)
        if isinstance(token, Verdict):
            return token
        key = digest(token)
        known = self.remembered.get(key)
        if known is not None:
            if known[1] > self.clock():
                return known[0]
            del self.remembered[key]
        if self.static is not None and self.static.accepts(key):
            return ALLOWED
        if not well_formed(token):
            return MALFORMED
        if self.reviewer is None:
            return INVALID
        pending = self._reviewing.get(key)
        if pending is None:
            pending = self._reviewing[key] = asyncio.ensure_future(self._review(token, key))
        return pending

    async def close(self) -> None:
        for task in list(self._reviewing.values()):
            task.cancel()
        if self.reviewer is not None:
            await self.reviewer.close()

    async def _review(self, token: str, key: bytes) -> Verdict:
        try:
            verdict, ttl_s = await self._decide(token)
        except Exception as err:  # a bug must not leave the request unanswered
            self.say(f"auth: token review failed: {type(err).__name__}")
            verdict, ttl_s = UNAVAILABLE, 0.0
        finally:
            del self._reviewing[key]
        if ttl_s > 0:
            while len(self.remembered) >= self.max_remembered:
                del self.remembered[next(iter(self.remembered))]  # the oldest
            self.remembered[key] = (verdict, self.clock() + ttl_s)
        return verdict

    async def _decide(self, token: str) -> tuple[Verdict, float]:
        assert self.reviewer is not None
        claims = jwt_claims(token)
        if claims is None:
            return INVALID, self.deny_ttl_s
        claimed = [a for a in claims.audiences if a != self.audience]
        try:
            review = await self.reviewer.review(token, [self.audience, *claimed])
        except ReviewError as err:
            if not self._unavailable:
                self._unavailable = True
                self.say(f"auth: answering 503 until the API server reviews tokens: {err}")
            return UNAVAILABLE, 0.0
        if self._unavailable:
            self._unavailable = False
            self.say("auth: the API server reviews tokens again")
        if not review.authenticated:
            return INVALID, self.deny_ttl_s
        if self.audience not in review.audiences:
            return self.wrong_audience, self.deny_ttl_s
        ttl_s = self.allow_ttl_s
        if claims.expires is not None:
            ttl_s = min(ttl_s, claims.expires - self.wall())
        return ALLOWED, ttl_s


def authenticator(settings: Settings, env: Mapping[str, str], say: Say) -> Authenticator | None:
    """The settings' authenticator, None without auth; SettingsError if it cannot work."""
    if not settings.auth:
        return None
    static = None
    if settings.auth_tokens_dir is not None:
        static = StaticTokens(settings.auth_tokens_dir, say)
        static.refresh()
    reviewer = None
    if settings.auth_audience is not None:
        # aiohttp is a slow import: a server without TokenReview answers sooner without it.
        from kaon_kernels.serve.tokenreview import TokenReviewer  # noqa: PLC0415

        reviewer = TokenReviewer.from_env(env)
    return Authenticator(static, reviewer, settings.auth_audience, say)


def describe(auth: Authenticator) -> str:
    """What the authenticator accepts, for the startup log (counts and names, no tokens)."""
    accepted: list[str] = []
    if auth.static is not None:
        accepted.append(f"{len(auth.static.digests)} static token(s) of {auth.static.directory}")
    if auth.reviewer is not None:
        accepted.append(f"ServiceAccount tokens for the audience {auth.audience!r}")
    return "bearer tokens required: " + " or ".join(accepted)
