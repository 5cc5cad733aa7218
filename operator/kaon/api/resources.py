"""Integer resource amounts: millicores, bytes and GPUs."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal, InvalidOperation
from typing import Any

from kaon.api.names import GPU_RESOURCE

_BINARY = {"Ki": 1, "Mi": 2, "Gi": 3, "Ti": 4, "Pi": 5, "Ei": 6}
_DECIMAL = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}


def parse(value: int | str | float) -> Decimal:
    """A resource quantity ("500m", "2Gi", "1e3", 4) as a number, as the API server reads it."""
    if isinstance(value, int | float):
        return Decimal(str(value))
    text = value.strip()
    try:
        if text[-2:] in _BINARY:
            return Decimal(text[:-2]) * Decimal(1024) ** _BINARY[text[-2:]]
        if text and text[-1] in _DECIMAL and not text[-1].isdigit():
            return Decimal(text[:-1]) * Decimal(10) ** _DECIMAL[text[-1]]
        return Decimal(text)  # plain or with an exponent (1e3)
    except (InvalidOperation, IndexError) as exc:
        raise ValueError(f"{value!r} is not a resource quantity") from exc


@dataclass(frozen=True, slots=True)
class Resources:
    milli_cpu: int = 0
    memory: int = 0
    gpus: int = 0
    pods: int = 0

    @classmethod
    def of(
        cls,
        cpu: int | str | float = 0,
        memory: int | str = 0,
        gpus: int | str = 0,
        pods: int | str = 0,
    ) -> Resources:
        return cls(
            int((parse(cpu) * 1000).to_integral_value(ROUND_CEILING)),
            int(parse(memory).to_integral_value(ROUND_CEILING)),
            int(parse(gpus)),
            int(parse(pods)),
        )

    @classmethod
    def from_k8s(cls, amounts: dict[str, Any] | None) -> Resources:
        """From a node's allocatable or a container's requests (missing keys are zero)."""
        amounts = amounts or {}
        return cls.of(
            amounts.get("cpu", 0),
            amounts.get("memory", 0),
            amounts.get(GPU_RESOURCE, 0),
            amounts.get("pods", 0),
        )

    def __add__(self, o: Resources) -> Resources:
        return Resources(
            self.milli_cpu + o.milli_cpu,
            self.memory + o.memory,
            self.gpus + o.gpus,
            self.pods + o.pods,
        )

    def __sub__(self, o: Resources) -> Resources:
        return self + o.times(-1)

    def times(self, n: int) -> Resources:
        return Resources(self.milli_cpu * n, self.memory * n, self.gpus * n, self.pods * n)

    def fits_in(self, free: Resources) -> bool:
        return self.copies_in(free) >= 1

    def copies_in(self, free: Resources) -> int:
        """How many of this demand fit into `free` (all resources at once)."""
        counts = [
            free.milli_cpu // self.milli_cpu if self.milli_cpu else None,
            free.memory // self.memory if self.memory else None,
            free.gpus // self.gpus if self.gpus else None,
            free.pods // self.pods if self.pods else None,
        ]
        finite = [max(c, 0) for c in counts if c is not None]
        return min(finite) if finite else 1 << 30

    @property
    def cpu(self) -> float:
        return self.milli_cpu / 1000
