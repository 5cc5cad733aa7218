"""`kaon run` and `kaon router` run on uvloop where installed, unless KAON_LOOP=asyncio."""

from __future__ import annotations

import asyncio
import sys

import pytest
import uvloop

from kaon.cli import event_loop


def test_uvloop_by_default_and_asyncio_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KAON_LOOP", raising=False)
    assert event_loop() is uvloop.new_event_loop
    monkeypatch.setenv("KAON_LOOP", "asyncio")
    assert event_loop() is asyncio.new_event_loop


def test_asyncio_where_uvloop_is_not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KAON_LOOP", raising=False)
    monkeypatch.setitem(sys.modules, "uvloop", None)
    assert event_loop() is asyncio.new_event_loop
