"""The server's event loop: uvloop where installed, else asyncio's (as uvicorn's `--loop auto`).

uvloop runs the same protocols and TLS transports with less of the interpreter's time per
request; on a GIL-bound server that time is throughput (figures in docs/architecture.md).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from kaon_kernels.serve.settings import SettingsError

LoopFactory = Callable[[], asyncio.AbstractEventLoop]


def loop_factory(choice: str) -> tuple[str, LoopFactory]:
    """(the loop's name, what makes it) for `--loop` auto, uvloop or asyncio."""
    if choice == "asyncio":
        return "asyncio", asyncio.new_event_loop
    try:
        import uvloop  # noqa: PLC0415  # optional: the server runs without it
    except ImportError:
        if choice == "uvloop":
            raise SettingsError("--loop uvloop: uvloop is not installed") from None
        return "asyncio", asyncio.new_event_loop
    return "uvloop", uvloop.new_event_loop
