"""Pod addresses of the rig's process agent: a subnet per node, one address per live pod."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

import pytest

from kaon_rig import podnet


def test_each_node_gets_a_stable_slash_24_outside_loopback() -> None:
    subnet = podnet.node_subnet("west-local-0")
    assert subnet == podnet.node_subnet("west-local-0")
    assert subnet.prefixlen == 24 and subnet.subnet_of(podnet.POD_NET)
    assert not subnet.network_address.is_loopback
    fallback = podnet.node_subnet("west-local-0", podnet.FALLBACK_NET)
    assert fallback.subnet_of(podnet.FALLBACK_NET) and fallback.network_address.is_loopback


def test_addresses_go_round_robin_and_never_to_two_live_pods() -> None:
    pool = podnet.AddressPool(IPv4Network("198.18.3.0/29"))  # hosts .1-.6; .1 is the node's
    a, b = pool.allocate("a"), pool.allocate("b")
    assert (a, b) == ("198.18.3.2", "198.18.3.3")
    assert pool.allocate("a") == a  # the same pod asks again: the same address
    pool.release("a")
    c = pool.allocate("c")
    assert c == "198.18.3.4"  # a released address waits for its turn
    assert {pool.allocate(x) for x in "de"} == {"198.18.3.5", "198.18.3.6"}
    assert pool.allocate("f") == a  # wrapped round to the free one
    with pytest.raises(RuntimeError):
        pool.allocate("g")
    assert set(pool.in_use().values()) == set("bcdef")


def test_the_first_pod_address_is_the_one_probed_for_locality() -> None:
    subnet = IPv4Network("198.18.9.0/24")
    assert podnet.first_pod_address(subnet) == IPv4Address("198.18.9.2")
    assert podnet.AddressPool(subnet).allocate("x") == "198.18.9.2"


def test_loopback_addresses_are_local_without_any_route() -> None:
    assert podnet.is_local(IPv4Network("127.77.1.0/24"))
