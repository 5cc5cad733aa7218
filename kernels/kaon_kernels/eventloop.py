"""The event loop of every kaon process: uvloop where installed, else asyncio's.

One chooser for the V2 server (`--loop`), the operator and the router (`KAON_LOOP`), as
uvicorn's `--loop auto` and kopf's CLI choose. uvloop runs the same protocols and TLS transports
with less of the interpreter's time per callback; on a GIL-bound process that time is throughput
(figures in docs/architecture.md). Loads no torch: the control plane imports it too.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

LoopFactory = Callable[[], asyncio.AbstractEventLoop]
LOOPS = ("auto", "uvloop", "asyncio")


class LoopUnavailableError(LookupError):
    """uvloop was asked for by name and is not installed."""


def loop_factory(choice: str) -> tuple[str, LoopFactory]:
    """(the loop's name, what makes it) for `choice`, one of LOOPS."""
    if choice not in LOOPS:
        raise ValueError(f"event loop {choice!r}: one of {', '.join(LOOPS)}")
    if choice == "asyncio":
        return "asyncio", asyncio.new_event_loop
    try:
        import uvloop  # noqa: PLC0415  # optional: every process runs without it
    except ImportError:
        if choice == "uvloop":
            raise LoopUnavailableError("uvloop is not installed") from None
        return "asyncio", asyncio.new_event_loop
    return "uvloop", uvloop.new_event_loop
