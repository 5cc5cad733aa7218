"""mypy over the packages of pyproject's [tool.mypy], as strictly as configured there.

With every imported package installed this is plain `mypy`. Without the `runtime` extra (torch),
as in `make check`, a module whose imports reach a package that is not installed cannot be type
checked: those modules are named and left out, and every other module is checked. `make lint`
installs the runtime first and so checks them all.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import tomllib
from pathlib import Path

import grimp

REPO = Path(__file__).resolve().parent.parent


def missing_packages(graph: grimp.ImportGraph, own: set[str]) -> set[str]:
    """The top-level packages imported somewhere in `graph` that are not installed."""
    external = {m for m in graph.modules if "." not in m and m not in own}
    return {name for name in external if importlib.util.find_spec(name) is None}


def checkable_modules(packages: list[str]) -> tuple[list[str], list[str]]:
    """The modules of `packages` whose imports, followed all the way, stay within installed
    packages; and the others."""
    graph = grimp.build_graph(*packages, include_external_packages=True, cache_dir=None)
    missing = missing_packages(graph, set(packages))
    own = sorted(m for m in graph.modules if m.split(".")[0] in packages)
    if not missing:
        return own, []
    unreachable = [m for m in own if missing & graph.find_upstream_modules(m)]
    return [m for m in own if m not in unreachable], unreachable


def main() -> int:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["mypy"]
    packages: list[str] = config["packages"]
    # Find the packages where mypy finds them (mypy_path), installed or not.
    sys.path[:0] = [str(REPO / path) for path in config.get("mypy_path", [])]
    checked, left_out = checkable_modules(packages)
    command = [sys.executable, "-m", "mypy"]
    if left_out:
        print(
            f"typecheck: {len(left_out)} modules import packages that are not installed and are "
            f"left out ({', '.join(left_out)}); `make lint` checks them with the runtime installed",
            flush=True,
        )
        command += [arg for module in checked for arg in ("-m", module)]
    return subprocess.run(command, cwd=REPO, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
