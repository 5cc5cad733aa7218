"""Helpers for tests against the rig: a handle on its clusters, and bounded waiting."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from kubernetes import client

from kaon.rig import paths
from kaon.rig.config import RigConfig
from kaon.rig.kube import api_client

T = TypeVar("T")


@dataclass
class Rig:
    """The running rig: its description and one API client per cluster."""

    config: RigConfig
    clients: dict[str, client.ApiClient] = field(default_factory=dict)

    def api(self, cluster: str) -> client.ApiClient:
        if cluster not in self.clients:
            self.clients[cluster] = api_client(self.kubeconfig(cluster))
        return self.clients[cluster]

    def core(self, cluster: str) -> client.CoreV1Api:
        return client.CoreV1Api(self.api(cluster))

    def kubeconfig(self, cluster: str) -> Path:
        return paths.kubeconfig_path(cluster)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.config.clusters]


def wait_for(
    fetch: Callable[[], T],
    done: Callable[[T], bool],
    what: str,
    timeout_s: float = 60.0,
    interval_s: float = 0.2,
) -> T:
    deadline = time.monotonic() + timeout_s
    while True:
        value = fetch()
        if done(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}; last: {value}")
        time.sleep(interval_s)
