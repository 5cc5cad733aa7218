"""Starting and stopping the rig's process agents (one background process per agent node)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from kaon_rig import paths
from kaon_rig.config import RigConfig

PID_FILE = "agent.pid"
LOG_FILE = "agent.log"


def agent_nodes(config: RigConfig) -> list[tuple[str, str]]:
    """(cluster, node) for every node of every pool that a process agent serves."""
    return [
        (c.name, p.node_name(c.name, i))
        for c in config.clusters
        for p in c.pools
        if p.agent
        for i in range(p.nodes)
    ]


def _pid(node: str) -> int | None:
    try:
        pid = int((paths.agent_dir(node) / PID_FILE).read_text())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


def start(config: RigConfig, config_path: Path | None) -> list[str]:
    """Start the agents that are not running; the nodes whose agent was started."""
    started = []
    for cluster, node in agent_nodes(config):
        if _pid(node) is not None:
            continue
        work = paths.agent_dir(node)
        work.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "kaon_rig.cli"]
        if config_path:
            cmd += ["--config", str(config_path)]
        cmd += ["agent", "--cluster", cluster, "--node", node]
        with (work / LOG_FILE).open("ab") as log:
            proc = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        (work / PID_FILE).write_text(f"{proc.pid}\n")
        started.append(node)
    return started


def stop(nodes: list[str]) -> None:
    """SIGTERM these nodes' agents (each kills its pods' processes), SIGKILL what is left."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for node in nodes:
            pid = _pid(node)
            if pid is not None:
                with contextlib.suppress(OSError):
                    os.kill(pid, sig)
        time.sleep(0.5 if sig == signal.SIGTERM else 0)


def stop_all() -> None:
    root = paths.rig_dir() / "agents"
    stop([d.name for d in root.iterdir()] if root.is_dir() else [])
