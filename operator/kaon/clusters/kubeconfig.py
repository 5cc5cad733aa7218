"""Credentials from a kubeconfig: server, TLS and the bearer token, without the kubernetes client.

kaon's clients (one per member) need nothing of the generated kubernetes client to read a
kubeconfig. Supported: the current context (or the
first), `certificate-authority(-data)`, `insecure-skip-tls-verify`, `client-certificate(-data)` +
`client-key(-data)`, `token`, `tokenFile`, and `exec` plugins (client.authentication.k8s.io
ExecCredential: a token or a client certificate). Legacy `auth-provider` entries are refused.
"""

from __future__ import annotations

import base64
import json
import os
import ssl
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml


class KubeconfigError(ValueError):
    """The kubeconfig cannot be used; the message names the field."""


@dataclass(frozen=True)
class Credentials:
    server: str
    ssl: ssl.SSLContext | bool  # False for plain http
    token: str | None


def _named(config: Mapping[str, Any], kind: str, name: str) -> dict[str, Any]:
    for entry in config.get(f"{kind}s") or []:
        if entry.get("name") == name:
            return dict(entry.get(kind) or {})
    raise KubeconfigError(f"{kind}s: no entry named {name!r}")


def _context(config: Mapping[str, Any]) -> dict[str, Any]:
    name = config.get("current-context")
    if name:
        return _named(config, "context", name)
    contexts = config.get("contexts") or []
    if not contexts:
        raise KubeconfigError("contexts: none, and no current-context")
    return dict(contexts[0].get("context") or {})


def _data_file(data: bytes, scratch: Path) -> str:
    """Inline data as a private file in `scratch` (ssl loads certificates from paths only)."""
    fd, path = tempfile.mkstemp(dir=scratch)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return path


def _path_or_data(entry: Mapping[str, Any], key: str, scratch: Path) -> str | None:
    if entry.get(f"{key}-data"):
        return _data_file(base64.b64decode(str(entry[f"{key}-data"])), scratch)
    return str(entry[key]) if entry.get(key) else None


def _exec_credential(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Run an exec plugin and return its ExecCredential status."""
    command = spec.get("command")
    if not command:
        raise KubeconfigError("users[].user.exec.command: required")
    env = dict(os.environ)
    env.update({e["name"]: e["value"] for e in spec.get("env") or []})
    try:
        done = subprocess.run(
            [command, *(spec.get("args") or [])],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        status = json.loads(done.stdout).get("status") or {}
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        raise KubeconfigError(f"users[].user.exec: {command} failed: {exc}") from exc
    return dict(status)


def credentials(config: Mapping[str, Any]) -> Credentials:
    """Server, TLS context and token of the kubeconfig's current context."""
    context = _context(config)
    cluster = _named(config, "cluster", str(context.get("cluster", "")))
    user = _named(config, "user", str(context.get("user", ""))) if context.get("user") else {}
    server = str(cluster.get("server") or "").rstrip("/")
    if not server:
        raise KubeconfigError("clusters[].cluster.server: required")
    if user.get("auth-provider"):
        raise KubeconfigError("users[].user.auth-provider: not supported, use an exec plugin")
    token = user.get("token")
    if not token and user.get("tokenFile"):
        token = Path(user["tokenFile"]).read_text().strip()
    status = _exec_credential(user["exec"]) if user.get("exec") else {}
    token = status.get("token") or token
    if not server.startswith("https"):
        return Credentials(server, False, token)
    # Certificates given inline are written to a private directory only while loading.
    with tempfile.TemporaryDirectory(prefix="kaon-tls-") as tmp:
        scratch = Path(tmp)
        ca = _path_or_data(cluster, "certificate-authority", scratch)
        tls = ssl.create_default_context(cafile=ca)
        if cluster.get("insecure-skip-tls-verify"):
            tls.check_hostname = False
            tls.verify_mode = ssl.CERT_NONE
        if status.get("clientCertificateData"):
            cert: str | None = _data_file(status["clientCertificateData"].encode(), scratch)
            key: str | None = _data_file(status["clientKeyData"].encode(), scratch)
        else:
            cert = _path_or_data(user, "client-certificate", scratch)
            key = _path_or_data(user, "client-key", scratch)
        if cert:
            tls.load_cert_chain(cert, key)
    return Credentials(server, tls, token)


def hub_kubeconfig() -> dict[str, Any]:
    """The hub's kubeconfig: $KUBECONFIG (first file), else ~/.kube/config."""
    path = (os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")).split(":")[0]
    with open(path) as f:
        config: dict[str, Any] = yaml.safe_load(f)
    return config
