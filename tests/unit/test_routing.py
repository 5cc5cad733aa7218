"""Where the router sends requests: exact revision shares, ready replicas only."""

from __future__ import annotations

from collections import Counter

import pytest

from kaon.lifecycle.routing import Route, Splitter, route_of, weights


def body(stable: list[str], canary: list[str], percent: int | None = None, min_: int = 1) -> dict:
    spec: dict = {"replicas": {"min": min_, "max": 4}}
    if percent is not None:
        spec["canary"] = {"model": {"uri": "pvc://m/x"}, "trafficPercent": percent}
    endpoints = [{"address": a, "revision": "stable"} for a in stable] + [
        {"address": a, "revision": "canary"} for a in canary
    ]
    half = len(endpoints) // 2
    clusters = [
        {"cluster": "west", "endpoints": endpoints[:half]},
        {"cluster": "east", "endpoints": endpoints[half:]},
    ]
    return {
        "metadata": {"namespace": "ns", "name": "svc"},
        "spec": spec,
        "status": {"clusters": clusters},
    }


@pytest.mark.parametrize(
    ("percent", "stable", "canary"), [(10, 1, 1), (10, 9, 1), (37, 3, 5), (1, 2, 2)]
)
def test_every_hundred_requests_give_the_canary_exactly_its_share(
    percent: int, stable: int, canary: int
) -> None:
    route = route_of(
        body([f"s{i}:8080" for i in range(stable)], [f"c{i}:8080" for i in range(canary)], percent)
    )
    splitter = Splitter()
    picks = [splitter.pick(route) for _ in range(2000)]
    for window in range(0, 2000, 100):
        shares = Counter(p[0] for p in picks[window : window + 100] if p)
        assert shares["canary"] == percent
    per_replica = Counter(p[1] for p in picks if p and p[0] == "canary")
    assert max(per_replica.values()) - min(per_replica.values()) <= 1  # round robin inside


def test_a_revision_without_a_ready_replica_gives_its_share_to_the_other() -> None:
    route = route_of(body(["s:1"], [], 10))
    assert weights(route) == {"stable": 90}
    assert {Splitter().pick(route) for _ in range(5)} == {("stable", "s:1")}
    only_canary = route_of(body([], ["c:1"], 10))
    assert Splitter().pick(only_canary) == ("canary", "c:1")
    assert Splitter().pick(route_of(body([], [], 10))) is None


def test_without_a_canary_everything_goes_to_stable_and_min_zero_may_wake() -> None:
    route = route_of(body(["a:1", "b:1"], [], None, min_=0))
    assert route.canary_percent == 0 and route.may_wake and route.ready
    assert [Splitter().pick(route) for _ in range(1)] == [("stable", "a:1")]
    assert not route_of(body([], [])).ready
    assert route_of({"metadata": {}, "spec": {}, "status": {}}) == Route(
        {"stable": (), "canary": ()}
    )
