"""`.bench/results.json`: every figure as {name: {value, unit, baseline, ratio}}, merged by name."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

RESULTS = Path(".bench/results.json")


def record(name: str, value: float, unit: str, baseline: float | None = None) -> dict[str, Any]:
    ratio = (value / baseline) if baseline else None
    entry = {"value": round(value, 4), "unit": unit, "baseline": baseline, "ratio": ratio}
    if baseline is not None:
        entry["baseline"] = round(baseline, 4)
        entry["ratio"] = round(value / baseline, 4) if baseline else None
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    merged = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    merged[name] = entry
    RESULTS.write_text(json.dumps(merged, indent=2, sort_keys=True) + "\n")
    return entry


def table(entries: dict[str, dict[str, Any]]) -> str:
    lines = [f"{'figure':<44} {'value':>12} {'unit':<10} {'baseline':>12} {'ratio':>8}"]
    for name, e in entries.items():
        base = "" if e["baseline"] is None else f"{e['baseline']:>12.4g}"
        ratio = "" if e["ratio"] is None else f"{e['ratio']:>8.3f}"
        lines.append(f"{name:<44} {e['value']:>12.4g} {e['unit']:<10} {base:>12} {ratio:>8}")
    return "\n".join(lines)
