"""The registry of model families: name -> `Family`.

`FamilyName` (in `kaon_kernels.config`) lists the names the CRD accepts; `_entry` matches it
exhaustively, so a name without an entry is a mypy error, and `family()` refuses any other name
with an error naming it and the known ones: there is no fallback family.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, assert_never, get_args

from kaon_kernels.config import FamilyName
from kaon_kernels.families import cnn, rnn
from kaon_kernels.families.base import Family


class UnknownFamilyError(ValueError):
    """A model family with no entry in the registry."""

    def __init__(self, name: object) -> None:
        super().__init__(f"unknown model family {name!r}; known families: {', '.join(FAMILIES)}")
        self.name = name


def _entry(name: FamilyName) -> Family[Any]:
    match name:
        case "cnn":
            return cnn.FAMILY
        case "rnn":
            return rnn.FAMILY
        case _:
            assert_never(name)


FAMILIES: Mapping[str, Family[Any]] = {name: _entry(name) for name in get_args(FamilyName)}


def family(name: str) -> Family[Any]:
    """The family called `name`; UnknownFamilyError for any other name."""
    try:
        return FAMILIES[name]
    except (KeyError, TypeError):
        raise UnknownFamilyError(name) from None
