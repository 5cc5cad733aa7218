from pathlib import Path

import pytest
from pydantic import ValidationError

from kaon.api.names import GPU_RESOURCE
from kaon_rig import agent, agents, paths
from kaon_rig.config import (
    POOL_LABEL,
    RigConfig,
    RigPool,
    load_config,
    node_manifest,
    node_manifests,
)
from kaon_rig.versions import RigVersions


def test_packaged_rig_has_a_hub_and_two_members_with_gpu_and_cpu_pools() -> None:
    config = load_config()
    assert [c.name for c in config.clusters] == ["hub", "east", "west"]
    for member in ("east", "west"):
        pools = config.cluster(member).pools
        assert any(p.gpus > 0 for p in pools), member
        assert any(p.gpus == 0 for p in pools), member
    accelerators = {p.accelerator for c in config.clusters for p in c.pools if p.gpus}
    assert len(accelerators) == 2


def test_gpu_node_advertises_gpus_and_is_tainted_and_labelled() -> None:
    pool = RigPool(name="gpu-a100", nodes=1, gpus=8, accelerator="nvidia-a100", cpu="64")
    node = node_manifest("east", pool, 0)
    assert node["metadata"]["name"] == "east-gpu-a100-0"
    assert node["metadata"]["labels"][POOL_LABEL] == "gpu-a100"
    assert node["metadata"]["labels"]["kaon.dev/accelerator"] == "nvidia-a100"
    assert node["metadata"]["annotations"] == {"kwok.x-k8s.io/node": "fake"}
    assert node["status"]["capacity"][GPU_RESOURCE] == "8"
    assert node["status"]["allocatable"]["cpu"] == "64"
    assert node["spec"]["taints"] == [
        {"key": "nvidia.com/gpu", "value": "true", "effect": "NoSchedule"}
    ]


def test_cpu_node_has_no_gpu_and_no_taint() -> None:
    node = node_manifest("west", RigPool(name="cpu", nodes=1), 3)
    assert GPU_RESOURCE not in node["status"]["capacity"]
    assert node["spec"]["taints"] == []
    assert "kaon.dev/accelerator" not in node["metadata"]["labels"]


def test_node_manifests_cover_every_pool_node() -> None:
    cluster = load_config().cluster("east")
    names = [n["metadata"]["name"] for n in node_manifests(cluster)]
    assert len(names) == sum(p.nodes for p in cluster.pools if not p.agent)
    assert len(set(names)) == len(names)


def test_unknown_field_in_rig_config_is_refused_naming_it() -> None:
    with pytest.raises(ValidationError, match="gpuz"):
        RigConfig.model_validate(
            {"clusters": [{"name": "a", "pools": [{"name": "p", "nodes": 1, "gpuz": 2}]}]}
        )


def test_unknown_cluster_lookup_names_the_known_ones() -> None:
    with pytest.raises(KeyError, match="known: hub, east, west"):
        load_config().cluster("north")


def test_cache_and_rig_dirs_follow_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("KAON_CACHE", str(tmp_path / "c"))
    monkeypatch.delenv("KAON_RIG_DIR", raising=False)
    assert paths.kubectl_binary().is_relative_to(tmp_path / "c" / "bin")
    assert paths.kubeconfig_path("east") == tmp_path / "c/rig/clusters/east/kubeconfig.yaml"
    monkeypatch.setenv("KAON_RIG_DIR", str(tmp_path / "r"))
    assert paths.kubeconfig_path("east") == tmp_path / "r/clusters/east/kubeconfig.yaml"


def test_binaries_are_cached_by_version(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("KAON_CACHE", str(tmp_path))
    old, new = RigVersions(kubernetes="1.35.0"), RigVersions(kubernetes="1.36.3")
    assert paths.kube_bin_dir(old) != paths.kube_bin_dir(new)
    assert new.staging == "v0.36.3"
    assert new.kubernetes_minor == "36"


def test_agent_pools_are_left_to_their_agent_not_to_kwok() -> None:
    config = load_config()
    west = config.cluster("west")
    (local,) = [p for p in west.pools if p.agent]
    assert local.name == "local" and local.gpus == 0
    kwok_nodes = [n["metadata"]["name"] for n in node_manifests(west)]
    assert local.node_name("west", 0) not in kwok_nodes
    assert len(kwok_nodes) == sum(p.nodes for p in west.pools if not p.agent)
    # One in each member, so a job that really trains can move between them.
    assert agents.agent_nodes(config) == [("east", "east-local-0"), ("west", "west-local-0")]
    node = agent.agent_node("west-local-0", local)
    assert "annotations" not in node["metadata"]  # kwok leaves it alone
    assert node["spec"]["taints"] == [agent.AGENT_TAINT]
    assert node["metadata"]["labels"][POOL_LABEL] == "local"
