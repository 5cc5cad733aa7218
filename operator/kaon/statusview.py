"""`kaon status`: the hub's clusters, pools, jobs and services at a glance (pure formatting).

Every function takes the objects as the API server returns them (dicts) and never fails on a
status that is partial or not written yet: a fresh object shows as Pending with dashes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

Obj = dict[str, Any]
Row = tuple[str, ...]

NONE = "-"
MESSAGE_WIDTH = 60
# Active work first; finished last.
STATE_ORDER = {
    s: i
    for i, s in enumerate(
        (
            "Running",
            "Deploying",
            "Degraded",
            "Admitted",
            "Waiting",
            "Pending",
            "Suspended",
            "Ready",
            "Failed",
            "Succeeded",
        )
    )
}
# The condition that says why a job is in a state.
JOB_WHY = {"Waiting": "Admitted", "Failed": "Failed", "Suspended": "Suspended"}


def table(headers: Row, rows: Sequence[Row]) -> str:
    """Left-aligned columns two spaces apart; the last column is not padded."""
    widths = [max(len(r[i]) for r in (headers, *rows)) for i in range(len(headers))]
    lines = []
    for r in (headers, *rows):
        cells = [c.ljust(w) for c, w in zip(r[:-1], widths, strict=False)] + [r[-1]]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def amount(value: float | int | None) -> str:
    """A CPU or GPU amount: whole numbers without decimals, others with one."""
    if value is None:
        return NONE
    return str(int(value)) if float(value).is_integer() else f"{value:.1f}"


def shorten(text: str, width: int = MESSAGE_WIDTH) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _status(obj: Obj) -> Obj:
    return obj.get("status") or {}


def _key(obj: Obj) -> str:
    meta = obj["metadata"]
    return f"{meta['namespace']}/{meta['name']}" if meta.get("namespace") else str(meta["name"])


def condition(obj: Obj, type_: str) -> Obj:
    for c in _status(obj).get("conditions") or []:
        if c.get("type") == type_:
            return dict(c)
    return {}


def state(obj: Obj) -> str:
    return str(_status(obj).get("state") or "Pending")


def _reason(cond: Obj) -> str:
    reason, message = cond.get("reason") or "", cond.get("message") or ""
    return shorten(f"{reason}: {message}" if message else reason)


def job_why(job: Obj) -> str:
    """Why a job waits, failed or is suspended: `Reason: message` of that condition."""
    cond = condition(job, JOB_WHY.get(state(job), ""))
    return _reason(cond) if cond else ""


def service_why(svc: Obj) -> str:
    """Why a service is not (fully) serving: not placed or not ready, or placed short."""
    placed, ready = condition(svc, "Placed"), condition(svc, "Ready")
    if placed and (placed.get("status") != "True" or placed.get("reason") not in ("", "Placed")):
        return _reason(placed)
    if ready and ready.get("status") != "True":
        return _reason(ready)
    return ""


def cluster_rows(clusters: Iterable[Obj]) -> list[Row]:
    rows: list[Row] = []
    for cc in sorted(clusters, key=_key):
        ready = condition(cc, "Ready")
        pools = [p.get("name", "") for p in (cc.get("spec") or {}).get("pools") or []]
        rows.append(
            (
                _key(cc),
                ready.get("status") or "Unknown",
                ready.get("reason") or NONE,
                ",".join(pools) or NONE,
                shorten(ready.get("message") or ""),
            )
        )
    return rows


def _free_of(pool: Obj, resource: str) -> str:
    free = (pool.get("free") or {}).get(resource)
    total = (pool.get("allocatable") or {}).get(resource)
    return f"{amount(free)}/{amount(total)}"


def pool_rows(clusters: Iterable[Obj]) -> list[Row]:
    rows: list[Row] = []
    for cc in sorted(clusters, key=_key):
        for pool in _status(cc).get("pools") or []:
            rows.append(
                (
                    _key(cc),
                    str(pool.get("name", "")),
                    str(pool.get("nodes", 0)),
                    _free_of(pool, "cpu"),
                    _free_of(pool, "gpus"),
                )
            )
    return rows


def progress(job: Obj) -> str:
    percent = (_status(job).get("progress") or {}).get("percent")
    if percent is None:
        return "100%" if state(job) == "Succeeded" else NONE
    return f"{int(percent)}%"


def where(job: Obj) -> str:
    placement = _status(job).get("placement") or {}
    if not placement.get("cluster"):
        return NONE
    return f"{placement['cluster']}/{placement.get('pool', '')}"


def ordered(objs: Iterable[Obj]) -> list[Obj]:
    return sorted(objs, key=lambda o: (STATE_ORDER.get(state(o), len(STATE_ORDER)), _key(o)))


def job_rows(jobs: Iterable[Obj]) -> list[Row]:
    rows: list[Row] = []
    for job in ordered(jobs):
        workers = _status(job).get("workers") or {}
        total = workers.get("total") or (job.get("spec") or {}).get("workers", 0)
        rows.append(
            (
                _key(job),
                state(job),
                where(job),
                f"{workers.get('ready', 0)}/{total}",
                progress(job),
                job_why(job),
            )
        )
    return rows


def service_pools(svc: Obj) -> str:
    status = _status(svc)
    if status.get("pools"):
        return str(status["pools"])
    placed = [f"{c.get('cluster')}/{c.get('pool')}" for c in status.get("clusters") or []]
    return ",".join(placed) or NONE


def service_rows(services: Iterable[Obj]) -> list[Row]:
    rows: list[Row] = []
    for svc in ordered(services):
        status = _status(svc)
        rows.append(
            (
                _key(svc),
                state(svc),
                f"{status.get('readyReplicas', 0)}/{status.get('replicas', 0)}",
                service_pools(svc),
                str(status.get("url") or NONE),
                service_why(svc),
            )
        )
    return rows


def summary(objs: Sequence[Obj]) -> str:
    counts = Counter(state(o) for o in objs)
    by_state = sorted(counts.items(), key=lambda kv: STATE_ORDER.get(kv[0], len(STATE_ORDER)))
    return ", ".join(f"{n} {s}" for s, n in by_state) or "none"


def _section(title: str, headers: Row, rows: list[Row], total: int, limit: int) -> str:
    shown = rows[:limit]
    body = table(headers, shown) if shown else "  (none)"
    more = f"\n… {total - len(shown)} more (kaon status --limit N)" if total > len(shown) else ""
    return f"{title}\n{body}{more}"


def render(
    clusters: Sequence[Obj], jobs: Sequence[Obj], services: Sequence[Obj], limit: int = 20
) -> str:
    """The whole view: clusters, pools (free/total), jobs, services; `limit` rows per section."""
    sections = [
        _section(
            f"CLUSTERS ({len(clusters)})",
            ("CLUSTER", "READY", "REASON", "POOLS", "MESSAGE"),
            cluster_rows(clusters),
            len(clusters),
            limit,
        ),
        _section(
            "POOLS (free/total)",
            ("CLUSTER", "POOL", "NODES", "CPU", "GPU"),
            pool_rows(clusters),
            sum(len(_status(c).get("pools") or []) for c in clusters),
            limit * 4,
        ),
        _section(
            f"TRAININGJOBS ({summary(jobs)})",
            ("JOB", "STATE", "CLUSTER/POOL", "READY", "PROGRESS", "REASON"),
            job_rows(jobs),
            len(jobs),
            limit,
        ),
        _section(
            f"INFERENCESERVICES ({summary(services)})",
            ("SERVICE", "STATE", "READY", "POOLS", "URL", "REASON"),
            service_rows(services),
            len(services),
            limit,
        ),
    ]
    return "\n\n".join(sections)
