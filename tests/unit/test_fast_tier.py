"""The fast tier stays fast: nothing in tests/unit loads torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

UNIT = Path(__file__).parent


def test_the_fast_tier_never_imports_torch() -> None:
    # In a process of its own: in `make test`, tests/runtime and tests/e2e load torch beside it.
    modules = sorted(p.stem for p in UNIT.glob("*.py") if p.stem != "__init__")
    code = (
        "import importlib, json, sys\n"
        f"sys.path[:0] = [{str(UNIT)!r}, {str(UNIT.parent)!r}]\n"
        "for name in sys.argv[1:]:\n"
        "    importlib.import_module(name)\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] == 'torch')))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, *modules], capture_output=True, text=True, check=True
    )
    assert len(modules) > 10  # the unit tests themselves were imported
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []
