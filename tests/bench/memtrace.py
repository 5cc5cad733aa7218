"""Runs `kaon` under tracemalloc; on SIGUSR1 writes where the operator's memory is held.

Used by `controlplane.py` when KAON_BENCH_MEMPROFILE names the report file:
    python tests/bench/memtrace.py REPORT run [kaon run's flags]
"""

from __future__ import annotations

import signal
import sys
import tracemalloc
from pathlib import Path
from types import FrameType

FRAMES = 12
TOP = 40


def write_report(path: Path) -> None:
    snapshot = tracemalloc.take_snapshot().filter_traces(
        [tracemalloc.Filter(False, tracemalloc.__file__)]
    )
    traced, peak = tracemalloc.get_traced_memory()
    lines = [f"traced {traced / 2**20:.1f} MiB, traced peak {peak / 2**20:.1f} MiB", ""]
    for key in ("filename", "lineno"):
        lines.append(f"## by {key}")
        lines += [str(stat) for stat in snapshot.statistics(key)[:TOP]]
        lines.append("")
    lines.append("## by traceback")
    for stat in snapshot.statistics("traceback")[:15]:
        lines.append(f"{stat.size / 2**20:.2f} MiB in {stat.count} blocks")
        lines += [f"    {line}" for line in stat.traceback.format()]
    path.write_text("\n".join(lines) + "\n")


def main() -> int:
    report = Path(sys.argv[1])

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        write_report(report)

    signal.signal(signal.SIGUSR1, on_signal)
    tracemalloc.start(FRAMES)
    from kaon.cli import main as kaon_main  # noqa: PLC0415  (imports traced too)

    return kaon_main(sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
