"""Pod addresses for the rig's process agent: one local IPv4 address per pod.

A pod's container binds its own address (`status.podIP`), so two replicas on the agent's node
can both listen on the same port. EndpointSlices refuse loopback addresses, so the addresses
come from 198.18.0.0/16 (reserved for benchmarking, RFC 2544; never routed on the internet): each
node gets a /24 of it, made local to this machine with one kernel route
(`ip route replace local <subnet> dev lo`, which needs CAP_NET_ADMIN, i.e. root). Without that
right the agent falls back to a /24 of 127.77.0.0/16: the pods still get distinct addresses, but
the EndpointSlice controller cannot publish them.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import subprocess
import zlib
from ipaddress import IPv4Address, IPv4Network

log = logging.getLogger("kaon_rig.podnet")

NODE_IP = "127.0.0.1"
POD_NET = IPv4Network("198.18.0.0/16")
FALLBACK_NET = IPv4Network("127.77.0.0/16")
SUBNET_PREFIX = 24


def node_subnet(node: str, net: IPv4Network = POD_NET) -> IPv4Network:
    """The node's /24 of `net`, chosen by a stable hash of its name."""
    subnets = 2 ** (SUBNET_PREFIX - net.prefixlen)
    index = zlib.crc32(node.encode()) % subnets
    return IPv4Network((int(net.network_address) + index * 2 ** (32 - SUBNET_PREFIX), 24))


class AddressPool:
    """Addresses of one subnet, handed out round robin, never two live pods on one address.

    Round robin (as CNI's host-local IPAM does) keeps a just-released address out of use for as
    long as possible, so a stale EndpointSlice entry never points at a newer pod.
    """

    def __init__(self, subnet: IPv4Network) -> None:
        self.subnet = subnet
        # .0 is the network, .1 is kept for the node's side, the last one is the broadcast.
        self._hosts = [str(ip) for ip in subnet.hosts()][1:]
        self._next = 0
        self._owners: dict[str, str] = {}  # address -> pod uid

    def allocate(self, uid: str) -> str:
        for ip, owner in self._owners.items():
            if owner == uid:
                return ip
        for step in range(len(self._hosts)):
            ip = self._hosts[(self._next + step) % len(self._hosts)]
            if ip not in self._owners:
                self._owners[ip] = uid
                self._next = (self._next + step + 1) % len(self._hosts)
                return ip
        raise RuntimeError(f"no free pod address left in {self.subnet}")

    def release(self, uid: str) -> None:
        for ip in [ip for ip, owner in self._owners.items() if owner == uid]:
            del self._owners[ip]

    def in_use(self) -> dict[str, str]:
        return dict(self._owners)


def first_pod_address(subnet: IPv4Network) -> IPv4Address:
    return subnet.network_address + 2


def is_local(subnet: IPv4Network) -> bool:
    """Whether this machine accepts the subnet's addresses as its own (a socket can bind one)."""
    with socket.socket() as s:
        try:
            s.bind((str(first_pod_address(subnet)), 0))
        except OSError:
            return False
    return True


def _ip_route(*args: str) -> bool:
    try:
        done = subprocess.run(["ip", "route", *args], capture_output=True, text=True, check=False)
    except OSError:
        return False
    if done.returncode != 0:
        log.debug("ip route %s: %s", " ".join(args), done.stderr.strip())
    return done.returncode == 0


def claim_subnet(node: str) -> tuple[IPv4Network, bool]:
    """The node's pod subnet, made local if it is not yet; (subnet, whether a route was added)."""
    subnet = node_subnet(node)
    if is_local(subnet):
        return subnet, False
    if _ip_route("replace", "local", str(subnet), "dev", "lo") and is_local(subnet):
        return subnet, True
    fallback = node_subnet(node, FALLBACK_NET)
    log.warning(
        "cannot make %s local (run the agent as root, or `ip route add local %s dev lo`); "
        "pods get loopback addresses from %s, which EndpointSlices refuse",
        subnet,
        subnet,
        fallback,
    )
    return fallback, False


def release_subnet(subnet: IPv4Network) -> None:
    """Remove the route `claim_subnet` added."""
    with contextlib.suppress(OSError):
        _ip_route("del", "local", str(subnet), "dev", "lo")
