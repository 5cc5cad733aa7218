"""Write the generated CRD files, or check that the files on disk match the models."""

from __future__ import annotations

from pathlib import Path

import yaml

from kaon.api.crd import RESOURCES, crd

HEADER = "# Generated from kaon.api by `make crds`; do not edit.\n"


class _NoAliases(yaml.SafeDumper):
    """Shared sub-schemas are written out in full: anchors would make the CRDs hard to read."""

    def ignore_aliases(self, data: object) -> bool:
        return True


def rendered() -> dict[str, str]:
    return {
        f"{r.name}.yaml": HEADER + yaml.dump(crd(r), Dumper=_NoAliases, sort_keys=False, width=100)
        for r in RESOURCES
    }


def write(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in rendered().items():
        path = directory / name
        path.write_text(text)
        written.append(path)
    return written


def stale(directory: Path) -> list[str]:
    """Names of files that are missing, differ from the models, or are no longer generated."""
    want = rendered()
    problems = [
        n
        for n, text in want.items()
        if not (directory / n).exists() or (directory / n).read_text() != text
    ]
    extra = [p.name for p in directory.glob("*.yaml") if p.name not in want]
    return problems + extra
