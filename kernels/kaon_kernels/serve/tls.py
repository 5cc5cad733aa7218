"""HTTPS: a server TLS context whose certificate follows its files.

cert-manager renews the certificate's Secret and the kubelet swaps the mounted files. Every
`interval_s` the reloader compares the files' identity, mtime and size with those of the pair
it loaded, and loads a changed pair into the same context: new handshakes use it, open
connections keep theirs. A pair that does not load (half written, or a key of another
certificate) leaves the current one in place, reported once until a pair loads again.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from kaon_kernels.serve.settings import SettingsError

RELOAD_INTERVAL_S = 10.0

Stamp = tuple[tuple[int, int, int], tuple[int, int, int]]


def _context() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


class PairWatch:
    """A certificate and key pair on disk: `renewed` hands its bytes once the files changed and
    the pair loads; a pair that does not load is reported once, until one loads again."""

    def __init__(self, cert_file: Path, key_file: Path, say: Callable[[str], None], what: str):
        self.cert_file = cert_file
        self.key_file = key_file
        self.say = say
        self.what = what  # "TLS" or "gRPC TLS", in what is said
        self._stamp = self._stat()
        self._failing = False

    def renewed(self, load: Callable[[str, str], None]) -> tuple[bytes, bytes] | None:
        """(certificate, key) of a changed pair that loads, after `load` took it from private
        copies of the very bytes returned; None while nothing changed or it does not load."""
        try:
            stamp = self._stat()
            if stamp == self._stamp:
                return None
            cert, key = self.cert_file.read_bytes(), self.key_file.read_bytes()
            with _private_files(cert, key) as (cert_copy, key_copy):
                # A pair that fails half-way leaves a context with the new certificate and no
                # key: try it on a scratch context first.
                _context().load_cert_chain(cert_copy, key_copy)
                load(cert_copy, key_copy)
        except (OSError, ValueError) as err:
            if not self._failing:
                self._failing = True
                self.say(
                    f"{self.what}: keeping the current certificate: the new pair does not load: "
                    f"{err}"
                )
            return None
        self._stamp = stamp
        self._failing = False
        self.say(f"{self.what}: serving the renewed certificate of {self.cert_file}")
        return cert, key

    def _stat(self) -> Stamp:
        cert, key = os.stat(self.cert_file), os.stat(self.key_file)
        return (
            (cert.st_ino, cert.st_mtime_ns, cert.st_size),
            (key.st_ino, key.st_mtime_ns, key.st_size),
        )


class CertReloader:
    """`context` serves `cert_file` and `key_file`; `check` loads them again once they change."""

    def __init__(
        self,
        cert_file: Path,
        key_file: Path,
        say: Callable[[str], None],
        interval_s: float = RELOAD_INTERVAL_S,
    ) -> None:
        self.interval_s = interval_s
        self.context = _context()
        try:
            self.watch = PairWatch(cert_file, key_file, say, "TLS")
            self.context.load_cert_chain(cert_file, key_file)
        except OSError as err:
            raise SettingsError(f"--tls-cert-file/--tls-key-file: cannot load: {err}") from None
        self._timer: asyncio.TimerHandle | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        def tick() -> None:
            self.check()
            self._timer = loop.call_later(self.interval_s, tick)

        self._timer = loop.call_later(self.interval_s, tick)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()

    def check(self) -> bool:
        """Load the pair if a file changed since the last load; True when a new pair loaded."""
        return self.watch.renewed(self.context.load_cert_chain) is not None


@contextlib.contextmanager
def _private_files(*blobs: bytes) -> Iterator[list[str]]:
    """Paths of copies of `blobs` that only this process sees (in memory on Linux): OpenSSL
    loads a pair from files only, and the files under watch may change between two loads."""
    if not hasattr(os, "memfd_create"):
        with tempfile.TemporaryDirectory() as tmp:
            paths = [os.path.join(tmp, str(n)) for n in range(len(blobs))]
            for path, blob in zip(paths, blobs, strict=True):
                Path(path).write_bytes(blob)
            yield paths
        return
    fds: list[int] = []
    try:
        for blob in blobs:
            fds.append(os.memfd_create("kaon-tls"))
            with open(fds[-1], "wb", closefd=False) as out:
                out.write(blob)
        yield [f"/proc/self/fd/{fd}" for fd in fds]
    finally:
        for fd in fds:
            os.close(fd)
