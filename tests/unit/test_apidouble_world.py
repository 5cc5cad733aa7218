"""The parts of the API double and of the engine kit the controller tests lean on."""

from __future__ import annotations

import asyncio
import contextlib

from kaon.clusters import paths
from kaon.clusters.client import Obj

from apidouble import ApiDouble
from enginekit import FakeClock, World, on_loop, until


def pod(name: str) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"containers": [{"name": "main"}]},
    }


@on_loop
async def test_held_watches_get_changes_only_on_release_and_in_order() -> None:
    api = ApiDouble()
    seen: list[tuple[str, str]] = []

    async def watch() -> None:
        async with contextlib.aclosing(api.watch(paths.pods(), api.resource_version)) as events:
            async for kind, obj in events:
                seen.append((kind, obj["metadata"]["name"]))

    task = asyncio.create_task(watch())
    await until(lambda: api.watching == 1, "watching")
    api.hold_watches()
    api.put(pod("a"))
    api.remove(paths.pod("default", "a"))
    api.put(pod("b"))
    for _ in range(20):
        await asyncio.sleep(0)
    assert seen == [] and api.delivered
    assert [p["metadata"]["name"] for p in api.items(paths.pods())] == ["b"]  # stored, listed
    api.release_watches()
    assert not api.delivered
    await until(lambda: api.delivered and len(seen) == 3, "the held changes arrive")
    assert seen == [("ADDED", "a"), ("DELETED", "a"), ("ADDED", "b")]
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def test_nodes_carry_their_taints_and_pods_their_termination_message() -> None:
    api = ApiDouble()
    taint = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}
    node = api.add_node("gpu-0", gpus=4, taints=[taint], unschedulable=True)
    assert node["spec"] == {"taints": [taint], "unschedulable": True}
    assert api.add_node("cpu-0")["spec"] == {}
    api.put(pod("p"))
    api.set_phase("default", "p", "Succeeded", termination_message='{"metrics": {}}')
    stored = api.peek(paths.pod("default", "p"))
    assert stored is not None
    terminated = stored["status"]["containerStatuses"][0]["state"]["terminated"]
    assert terminated == {"exitCode": 0, "reason": "Completed", "message": '{"metrics": {}}'}


def test_the_fake_clock_moves_only_when_told() -> None:
    clock = FakeClock()
    mono, wall = clock.monotonic(), clock.wall()
    assert (clock.monotonic(), clock.wall()) == (mono, wall)
    clock.advance(2.5)
    assert (clock.monotonic(), clock.wall()) == (mono + 2.5, wall + 2.5)


@on_loop
async def test_a_world_registers_its_members_on_the_hub(world: World) -> None:
    assert world.member().ready and world.member().client is world.members["west"]
    assert set(world.member().inventory.nodes) == {"west-cpu-0", "west-cpu-1", "west-gpu-0"}
    offers = {(o.cluster, o.pool): o for o in world.manager.admission.offers()}
    assert set(offers) == {("west", "cpu"), ("west", "gpu")}
    assert offers[("west", "gpu")].accelerator == "nvidia-t4"
    assert all(o.available for o in offers.values())
