"""The fast tier stays fast: nothing in tests/unit loads torch."""

from __future__ import annotations

import sys


def test_the_fast_tier_never_imports_torch() -> None:
    # Every module of tests/unit was imported at collection, before any test ran.
    assert "torch" not in sys.modules
