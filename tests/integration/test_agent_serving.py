"""The process agent serves Deployments as a kubelet would: pod IPs, probes, EndpointSlices.

Member west's node west-local-0 is the agent's: its pods are real processes of this machine, each
on its own IP, so the test reaches them directly (there is no kube-proxy on the rig).
"""

from __future__ import annotations

import socket
import textwrap
import time
import urllib.error
import urllib.request
from ipaddress import ip_address, ip_network
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from kaon_rig import paths
from kaon_rig.agent import AGENT_LABEL
from kaon_rig.config import POOL_LABEL

from kaonrig import Rig, wait_for

MEMBER = "west"
AGENT_NODE = "west-local-0"
PORT = 8080
DEADLINE_S = 120.0

# Answers its pod's name on every path but /ready, which is 503 until someone GETs /go.
SERVER = textwrap.dedent(
    """
    import http.server, os, signal, sys

    state = {"ready": False}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/go":
                state["ready"] = True
            code = 503 if self.path == "/ready" and not state["ready"] else 200
            body = os.environ["POD_NAME"].encode()
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    def bye(*_):
        print("got SIGTERM", flush=True)
        sys.exit(0)

    signal.signal(signal.SIGTERM, bye)
    print("serving on", os.environ["POD_IP"], flush=True)
    http.server.ThreadingHTTPServer((os.environ["POD_IP"], 8080), Handler).serve_forever()
    """
)
DOWNWARD = [
    {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
    {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
]
DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def local_pool(kaon_rig: Rig) -> str:
    return next(p.name for p in kaon_rig.config.cluster(MEMBER).pools if p.agent)


def deployment(kaon_rig: Rig, name: str, replicas: int, container: dict[str, Any]) -> Any:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "nodeSelector": {POOL_LABEL: local_pool(kaon_rig)},
                    "tolerations": [
                        {
                            "key": AGENT_LABEL,
                            "operator": "Equal",
                            "value": "true",
                            "effect": "NoSchedule",
                        }
                    ],
                    "terminationGracePeriodSeconds": 10,
                    "containers": [container],
                },
            },
        },
    }


def service(name: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {
            "selector": {"app": name},
            "ports": [{"name": "http", "port": 80, "targetPort": "http"}],
        },
    }


def get(ip: str, path: str) -> tuple[int, str]:
    """(status, body) of a GET to a pod's IP; status 0 when nothing answers."""
    try:
        with DIRECT.open(f"http://{ip}:{PORT}{path}", timeout=5) as resp:
            return int(resp.status), resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, ""
    except (urllib.error.URLError, OSError):
        return 0, ""


def refused(ip: str) -> bool:
    try:
        with socket.create_connection((ip, PORT), timeout=5):
            return False
    except ConnectionRefusedError:
        return True


def pods(core: client.CoreV1Api, ns: str, app: str) -> list[client.V1Pod]:
    return list(core.list_namespaced_pod(ns, label_selector=f"app={app}").items)


def is_ready(pod: client.V1Pod) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])


def endpoints(kaon_rig: Rig, ns: str, svc: str) -> dict[str, tuple[bool, list[int]]]:
    """address -> (ready, ports) over the Service's EndpointSlices."""
    slices = client.DiscoveryV1Api(kaon_rig.api(MEMBER)).list_namespaced_endpoint_slice(
        ns, label_selector=f"kubernetes.io/service-name={svc}"
    )
    out = {}
    for s in slices.items:
        ports = sorted(p.port for p in s.ports or [])
        for ep in s.endpoints or []:
            for address in ep.addresses:
                out[address] = (bool(ep.conditions.ready), ports)
    return out


def container_log(ns: str, pod: str, container: str) -> str:
    (found,) = (paths.agent_dir(AGENT_NODE) / "pods").glob(f"{ns}_{pod}_*")
    return (Path(found) / f"{container}.log").read_text()


def test_a_deployment_is_served_behind_its_service_with_probes_gating_readiness(
    kaon_rig: Rig, namespace: str
) -> None:
    core = kaon_rig.core(MEMBER)
    apps = client.AppsV1Api(kaon_rig.api(MEMBER))
    web = {
        "name": "web",
        "image": "kaon/runtime:test",
        "command": ["python", "-c", SERVER],
        "env": DOWNWARD,
        "ports": [{"name": "http", "containerPort": PORT}],
        "startupProbe": {"tcpSocket": {"port": "http"}, "periodSeconds": 1, "failureThreshold": 60},
        "readinessProbe": {"httpGet": {"path": "/ready", "port": "http"}, "periodSeconds": 1},
        "livenessProbe": {
            "exec": {"command": ["python", "-c", "import os; assert os.environ['POD_IP']"]},
            "periodSeconds": 2,
            "timeoutSeconds": 20,  # a python start on a busy machine
        },
    }
    apps.create_namespaced_deployment(namespace, deployment(kaon_rig, "web", 2, web))
    core.create_namespaced_service(namespace, service("web"))

    running = wait_for(
        lambda: pods(core, namespace, "web"),
        lambda ps: len(ps) == 2 and all(p.status.phase == "Running" for p in ps),
        "both replicas running",
        DEADLINE_S,
    )
    node = core.read_node(AGENT_NODE)
    assert node.spec.pod_cidr, "the agent's node has no pod CIDR"
    subnet = ip_network(node.spec.pod_cidr)
    assert not subnet.network_address.is_loopback, (
        f"the agent could not make {subnet} local; EndpointSlices refuse loopback pod IPs "
        "(run the rig as root, or `ip route add local 198.18.0.0/16 dev lo`)"
    )
    ips = {p.metadata.name: p.status.pod_ip for p in running}
    assert len(set(ips.values())) == 2
    for p in running:
        assert p.spec.node_name == AGENT_NODE
        assert p.metadata.owner_references[0].kind == "ReplicaSet"
        assert ip_address(p.status.pod_ip) in subnet
        assert [i.ip for i in p.status.pod_ips] == [p.status.pod_ip]
        assert p.status.host_ip == node.status.addresses[0].address

    # Both listen on their own IP and the same port; the readiness path still says no.
    for ip in ips.values():
        wait_for(lambda ip=ip: get(ip, "/ready")[0], lambda code: code == 503, f"{ip} up")
    slices = wait_for(
        lambda: endpoints(kaon_rig, namespace, "web"),
        lambda eps: set(eps) == set(ips.values()),
        "both pod IPs in the Service's EndpointSlices",
        DEADLINE_S,
    )
    assert not any(ready for ready, _ in slices.values()), slices
    time.sleep(3)  # three readiness periods: the probe keeps failing, nothing becomes ready
    for p in pods(core, namespace, "web"):
        assert not is_ready(p), p.status.conditions
        status = p.status.container_statuses[0]
        assert status.started and not status.ready  # the startup probe passed, readiness not
    assert not any(ready for ready, _ in endpoints(kaon_rig, namespace, "web").values())

    for ip in ips.values():
        assert get(ip, "/go")[0] == 200
    wait_for(
        lambda: pods(core, namespace, "web"),
        lambda ps: len(ps) == 2 and all(is_ready(p) for p in ps),
        "both replicas Ready",
        DEADLINE_S,
    )
    slices = wait_for(
        lambda: endpoints(kaon_rig, namespace, "web"),
        lambda eps: set(eps) == set(ips.values()) and all(ready for ready, _ in eps.values()),
        "both endpoints ready",
        DEADLINE_S,
    )
    assert all(ports == [PORT] for _, ports in slices.values())
    for name, ip in ips.items():
        assert get(ip, "/") == (200, name)
    for p in pods(core, namespace, "web"):
        assert p.status.container_statuses[0].ready
        assert p.status.container_statuses[0].restart_count == 0  # the exec liveness passes

    # Scale down: one replica goes, gracefully, and with it its process and endpoint.
    apps.patch_namespaced_deployment_scale("web", namespace, {"spec": {"replicas": 1}})
    (kept,) = wait_for(
        lambda: pods(core, namespace, "web"),
        lambda ps: len(ps) == 1 and ps[0].metadata.deletion_timestamp is None,
        "one replica left",
        DEADLINE_S,
    )
    (gone,) = set(ips) - {kept.metadata.name}
    with pytest.raises(ApiException) as err:
        core.read_namespaced_pod(gone, namespace)
    assert err.value.status == 404
    assert refused(ips[gone])
    assert "got SIGTERM" in container_log(namespace, gone, "web")
    assert get(ips[kept.metadata.name], "/") == (200, kept.metadata.name)
    wait_for(
        lambda: endpoints(kaon_rig, namespace, "web"),
        lambda eps: set(eps) == {ips[kept.metadata.name]},
        "only the kept replica in the EndpointSlices",
        DEADLINE_S,
    )


def test_a_failing_liveness_probe_restarts_the_container_on_the_same_ip(
    kaon_rig: Rig, namespace: str
) -> None:
    core = kaon_rig.core(MEMBER)
    apps = client.AppsV1Api(kaon_rig.api(MEMBER))
    sick = {
        "name": "sick",
        "image": "kaon/runtime:test",
        "command": ["python", "-m", "http.server", "--bind", "$(POD_IP)", str(PORT)],
        "env": [*DOWNWARD, {"name": "PYTHONUNBUFFERED", "value": "1"}],
        "ports": [{"name": "http", "containerPort": PORT}],
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": PORT},  # 404: http.server has no such file
            "periodSeconds": 1,
            "failureThreshold": 2,
            "terminationGracePeriodSeconds": 2,
        },
    }
    apps.create_namespaced_deployment(namespace, deployment(kaon_rig, "sick", 1, sick))

    (first,) = wait_for(
        lambda: pods(core, namespace, "sick"),
        lambda ps: len(ps) == 1 and bool(ps[0].status.pod_ip),
        "the pod started",
        DEADLINE_S,
    )
    (later,) = wait_for(
        lambda: pods(core, namespace, "sick"),
        lambda ps: (
            len(ps) == 1
            and (ps[0].status.container_statuses or [None])[0] is not None
            and ps[0].status.container_statuses[0].restart_count >= 2
        ),
        "two restarts after failed liveness probes",
        DEADLINE_S,
    )
    assert later.metadata.uid == first.metadata.uid  # restarted in place, not replaced
    assert later.status.pod_ip == first.status.pod_ip
    last = later.status.container_statuses[0].last_state.terminated
    assert last is not None and last.exit_code in (128 + 9, 128 + 15)  # killed, not exited
    wait_for(
        lambda: container_log(namespace, later.metadata.name, "sick").count("Serving HTTP"),
        lambda starts: starts >= 3,
        "a third start of the server in its log",
    )
