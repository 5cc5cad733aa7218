"""kaon's own kubeconfig reader and quantity parser (the operator runs without the kubernetes
client package)."""

import base64
import json
import ssl
import sys
from decimal import Decimal
from pathlib import Path

import pytest

from kaon.api.resources import Resources, parse
from kaon.clusters.kubeconfig import KubeconfigError, credentials


def kubeconfig(cluster: dict, user: dict, context: str | None = "main") -> dict:
    return {
        "clusters": [{"name": "c", "cluster": cluster}],
        "users": [{"name": "u", "user": user}],
        "contexts": [{"name": "main", "context": {"cluster": "c", "user": "u"}}],
        **({"current-context": context} if context else {}),
    }


def test_a_token_over_plain_http_needs_no_tls() -> None:
    creds = credentials(kubeconfig({"server": "http://127.0.0.1:8080/"}, {"token": "abc"}))
    assert (creds.server, creds.ssl, creds.token) == ("http://127.0.0.1:8080", False, "abc")


def test_a_token_file_is_read(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("from-file\n")
    user = {"tokenFile": str(tmp_path / "token")}
    assert credentials(kubeconfig({"server": "http://h"}, user, None)).token == "from-file"


def test_https_with_insecure_skip_verify_builds_a_non_verifying_context() -> None:
    cluster = {"server": "https://h:6443", "insecure-skip-tls-verify": True}
    creds = credentials(kubeconfig(cluster, {"token": "t"}))
    assert isinstance(creds.ssl, ssl.SSLContext)
    assert creds.ssl.verify_mode == ssl.CERT_NONE and not creds.ssl.check_hostname


def test_an_exec_plugin_gives_the_token(tmp_path: Path) -> None:
    plugin = tmp_path / "plugin.py"
    credential = {"kind": "ExecCredential", "status": {"token": "exec-token"}}
    plugin.write_text(f"import json; print(json.dumps({credential!r}))")
    user = {"exec": {"command": sys.executable, "args": [str(plugin)]}}
    assert credentials(kubeconfig({"server": "http://h"}, user)).token == "exec-token"


@pytest.mark.parametrize(
    ("config", "says"),
    [
        (kubeconfig({}, {"token": "t"}), "clusters[].cluster.server"),
        (kubeconfig({"server": "http://h"}, {"auth-provider": {"name": "gcp"}}), "auth-provider"),
        ({"clusters": [], "users": []}, "contexts"),
        (kubeconfig({"server": "http://h"}, {"exec": {"command": "/no/such/plugin"}}), "exec"),
    ],
)
def test_unusable_kubeconfigs_are_refused_naming_the_field(config: dict, says: str) -> None:
    with pytest.raises(KubeconfigError, match=said(says)):
        credentials(config)


def said(text: str) -> str:
    return text.replace("[", r"\[").replace("]", r"\]")


def test_inline_certificate_authority_data_is_what_tls_trusts() -> None:
    # A CA that is not a certificate fails to load: proof that the inline data is used.
    cluster = {
        "server": "https://h",
        "certificate-authority-data": base64.b64encode(b"not a certificate").decode(),
    }
    with pytest.raises(ssl.SSLError):
        credentials(kubeconfig(cluster, {"token": "t"}))


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("500m", Decimal("0.5")),
        ("2Gi", Decimal(2 * 1024**3)),
        ("128Mi", Decimal(128 * 1024**2)),
        ("1e3", Decimal(1000)),
        ("3k", Decimal(3000)),
        ("100n", Decimal("1E-7")),
        (4, Decimal(4)),
        ("1.5", Decimal("1.5")),
    ],
)
def test_quantities_parse_as_the_api_server_reads_them(text: str | int, value: Decimal) -> None:
    assert parse(text) == value


def test_a_bad_quantity_is_refused() -> None:
    with pytest.raises(ValueError, match="not a resource quantity"):
        parse("lots")
    assert Resources.of(cpu="250m", memory="1Gi").milli_cpu == 250


def test_json_is_not_confused_for_a_quantity() -> None:
    with pytest.raises(ValueError):
        parse(json.dumps({"cpu": 1}))
