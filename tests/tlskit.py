"""Certificates for tests: a CA and a server certificate it signs, made with the openssl CLI."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Issued:
    ca: Path  # the CA certificate (PEM), what a client verifies with
    cert: Path  # the server certificate (PEM)
    key: Path  # its private key (PEM)


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


def issue(work: Path, dns_names: list[str], ips: tuple[str, ...] = ()) -> Issued:
    """A fresh CA under `work` and a server certificate for `dns_names` and `ips`, valid a day."""
    work.mkdir(parents=True, exist_ok=True)
    ca_key, ca = work / "ca.key", work / "ca.crt"
    key, csr, cert = work / "tls.key", work / "tls.csr", work / "tls.crt"
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=kaon test CA",
        "-keyout", str(ca_key), "-out", str(ca),
    )  # fmt: skip
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={dns_names[0]}",
             "-keyout", str(key), "-out", str(csr))  # fmt: skip
    names = [f"DNS:{n}" for n in dns_names] + [f"IP:{ip}" for ip in ips]
    extensions = work / "san.ext"
    extensions.write_text(f"subjectAltName={','.join(names)}\nextendedKeyUsage=serverAuth\n")
    _openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
        "-CAcreateserial", "-days", "1", "-extfile", str(extensions), "-out", str(cert),
    )  # fmt: skip
    return Issued(ca, cert, key)
