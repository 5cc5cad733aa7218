"""`kaon status` formatting: objects as the API server returns them, in one aligned screen."""

from __future__ import annotations

from typing import Any

from kaon import statusview as sv


def cc(name: str, ready: str, reason: str, pools: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {"pools": [{"name": p["name"]} for p in pools]},
        "status": {
            "conditions": [{"type": "Ready", "status": ready, "reason": reason, "message": "m"}],
            "pools": pools,
        },
    }


def pool(name: str, cpu: tuple[float, float], gpus: tuple[int, int]) -> dict[str, Any]:
    return {
        "name": name,
        "nodes": 2,
        "allocatable": {"cpu": cpu[1], "memory": 0, "gpus": gpus[1]},
        "free": {"cpu": cpu[0], "memory": 0, "gpus": gpus[0]},
    }


def tj(ns: str, name: str, status: dict[str, Any] | None = None, workers: int = 2) -> dict:
    body: dict[str, Any] = {
        "metadata": {"namespace": ns, "name": name},
        "spec": {"workers": workers},
    }
    if status is not None:
        body["status"] = status
    return body


def cond(type_: str, status: str, reason: str, message: str = "") -> dict[str, str]:
    return {"type": type_, "status": status, "reason": reason, "message": message}


EAST = cc("east", "True", "Reachable", [pool("gpu-a100", (120.5, 128), (10, 16))])
WEST = cc("west", "False", "Unreachable", [pool("cpu", (128, 128), (0, 0))])
RUNNING = tj(
    "team-a",
    "cnn",
    {
        "state": "Running",
        "placement": {"cluster": "east", "pool": "gpu-a100"},
        "workers": {"total": 2, "ready": 2},
        "progress": {"percent": 42},
    },
)
WAITING = tj(
    "team-b",
    "big",
    {
        "state": "Waiting",
        "conditions": [
            cond("Admitted", "False", "InsufficientGPU", "pool gpu-a100 has 6 of 16 GPUs free")
        ],
    },
    workers=4,
)


def test_table_aligns_columns_and_does_not_pad_the_last() -> None:
    out = sv.table(("A", "LONGER"), [("xxxx", "1"), ("y", "22")])
    assert out.splitlines() == ["A     LONGER", "xxxx  1", "y     22"]


def test_amounts_drop_decimals_only_when_whole() -> None:
    assert [sv.amount(128.0), sv.amount(3), sv.amount(120.5), sv.amount(None)] == [
        "128",
        "3",
        "120.5",
        "-",
    ]


def test_shorten_keeps_one_line_within_the_width() -> None:
    assert sv.shorten("a\n  b", 10) == "a b"
    assert sv.shorten("x" * 80, 10) == "x" * 9 + "…"


def test_clusters_show_readiness_reason_and_pools() -> None:
    rows = sv.cluster_rows([WEST, EAST])
    assert rows == [
        ("east", "True", "Reachable", "gpu-a100", "m"),
        ("west", "False", "Unreachable", "cpu", "m"),
    ]


def test_a_cluster_without_status_is_unknown() -> None:
    rows = sv.cluster_rows([{"metadata": {"name": "new"}, "spec": {"pools": []}}])
    assert rows == [("new", "Unknown", "-", "-", "")]


def test_pools_show_free_over_total_cpu_and_gpus() -> None:
    assert sv.pool_rows([EAST, WEST]) == [
        ("east", "gpu-a100", "2", "120.5/128", "10/16"),
        ("west", "cpu", "2", "128/128", "0/0"),
    ]


def test_jobs_show_placement_workers_progress_and_why_they_wait() -> None:
    rows = sv.job_rows([WAITING, RUNNING])
    assert rows[0] == ("team-a/cnn", "Running", "east/gpu-a100", "2/2", "42%", "")
    assert rows[1] == (
        "team-b/big",
        "Waiting",
        "-",
        "0/4",
        "-",
        "InsufficientGPU: pool gpu-a100 has 6 of 16 GPUs free",
    )


def test_a_job_without_status_is_pending_and_a_succeeded_one_is_complete() -> None:
    done = tj("a", "done", {"state": "Succeeded", "workers": {"total": 1}})
    fresh = tj("a", "fresh", workers=3)
    assert sv.job_rows([done, fresh]) == [
        ("a/fresh", "Pending", "-", "0/3", "-", ""),
        ("a/done", "Succeeded", "-", "0/1", "100%", ""),
    ]


def test_a_failed_job_shows_the_failure_reason() -> None:
    failed = tj("a", "f", {"state": "Failed", "conditions": [cond("Failed", "True", "NoPoolFits")]})
    assert sv.job_why(failed) == "NoPoolFits"


def test_services_show_ready_replicas_pools_url_and_why_not_ready() -> None:
    ready = {
        "metadata": {"namespace": "a", "name": "digits"},
        "status": {
            "state": "Ready",
            "readyReplicas": 3,
            "replicas": 3,
            "pools": "west/cpu,east/cpu",
            "url": "http://digits.a.svc.cluster.local",
            "conditions": [
                cond("Placed", "True", "Placed"),
                cond("Ready", "True", "ReplicasReady"),
            ],
        },
    }
    waiting = {
        "metadata": {"namespace": "a", "name": "later"},
        "status": {
            "state": "Waiting",
            "conditions": [cond("Placed", "False", "ModelNotReady", "job digits-model: Running")],
        },
    }
    deploying = {
        "metadata": {"namespace": "a", "name": "soon"},
        "status": {
            "state": "Deploying",
            "clusters": [{"cluster": "west", "pool": "cpu"}],
            "replicas": 1,
            "conditions": [
                cond("Placed", "True", "Placed"),
                cond("Ready", "False", "ReplicasNotReady"),
            ],
        },
    }
    short = {
        "metadata": {"namespace": "a", "name": "spread"},
        "status": {
            "state": "Degraded",
            "conditions": [
                cond("Placed", "True", "SpreadIncomplete", "1 of 2 clusters"),
                cond("Ready", "True", "ReplicasReady"),
            ],
        },
    }
    rows = sv.service_rows([ready, waiting, deploying, short])
    assert rows == [
        ("a/soon", "Deploying", "0/1", "west/cpu", "-", "ReplicasNotReady"),
        ("a/spread", "Degraded", "0/0", "-", "-", "SpreadIncomplete: 1 of 2 clusters"),
        ("a/later", "Waiting", "0/0", "-", "-", "ModelNotReady: job digits-model: Running"),
        ("a/digits", "Ready", "3/3", "west/cpu,east/cpu", "http://digits.a.svc.cluster.local", ""),
    ]


def test_summary_counts_states_active_first() -> None:
    done = tj("a", "d", {"state": "Succeeded"})
    assert sv.summary([done, RUNNING, WAITING, done]) == "1 Running, 1 Waiting, 2 Succeeded"
    assert sv.summary([]) == "none"


def test_render_has_every_section_with_aligned_headers() -> None:
    out = sv.render([EAST, WEST], [RUNNING, WAITING], [])
    sections = out.split("\n\n")
    assert [s.splitlines()[0] for s in sections] == [
        "CLUSTERS (2)",
        "POOLS (free/total)",
        "TRAININGJOBS (1 Running, 1 Waiting)",
        "INFERENCESERVICES (none)",
    ]
    jobs = sections[2].splitlines()
    header, first = jobs[1], jobs[2]
    for column in ("STATE", "CLUSTER/POOL", "PROGRESS"):
        assert header.index(column) == first.index(
            {"STATE": "Running", "CLUSTER/POOL": "east/gpu-a100", "PROGRESS": "42%"}[column]
        )
    assert sections[3].splitlines()[1] == "  (none)"


def test_render_limits_rows_and_says_how_many_are_left_out() -> None:
    jobs = [tj("a", f"j{i:02}") for i in range(5)]
    out = sv.render([], jobs, [], limit=2)
    section = out.split("\n\n")[2].splitlines()
    assert len(section) == 1 + 1 + 2 + 1  # title, header, two rows, the note
    assert section[-1] == "… 3 more (kaon status --limit N)"
