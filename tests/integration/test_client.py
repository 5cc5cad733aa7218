"""kaon's own API client against the rig's hub: plain-text answers and how errors read."""

from __future__ import annotations

import asyncio

import pytest

from kaon.clusters.client import ApiError, KubeClient
from kaon_rig import paths

from kaonrig import Rig


def text_of(path: str) -> str:
    async def ask() -> str:
        hub = KubeClient.from_file(paths.kubeconfig_path("hub"))
        try:
            return await hub.text(path)
        finally:
            await hub.close()

    return asyncio.run(ask())


def test_text_reads_the_servers_own_metrics(kaon_rig: Rig) -> None:
    metrics = text_of("/metrics")
    assert "# TYPE apiserver_request_total counter" in metrics
    assert any(line.startswith("apiserver_request_total{") for line in metrics.splitlines())


def test_text_of_a_missing_path_is_an_api_error_saying_so(kaon_rig: Rig) -> None:
    with pytest.raises(ApiError) as err:
        text_of("/no-such-path")
    assert err.value.status == 404
