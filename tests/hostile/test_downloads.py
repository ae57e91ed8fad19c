"""Kernel source downloads against hostile servers (docs/security.md, "Hostile inputs"): real HTTP
and HTTPS servers on 127.0.0.1 (a throw-away certificate made with openssl, trusted through
SSL_CERT_FILE) that redirect https→http, send more than the cap, or trickle forever; and a local
tarball swapped for another one right after it is first read (watched with inotify), which must
not change what is extracted.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import http.server
import io
import os
import select
import ssl
import struct
import subprocess
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from vz_linux.build.sources import DownloadLimits, KernelPin, SourceKind, SourceSpec, acquire_source
from vz_linux.errors import KernelSourceError

from ..local_http import local_http_server

PIN = KernelPin(series="6.1", version="6.1.7", debian_package="linux-source-6.1",
                debian_tarball=Path("/usr/src/linux-source-6.1.tar.xz"), cache_schema="1")
BIG = 8 << 20
CAP = 1 << 20


def kernel_tarball(path: Path, sublevel: int = 7) -> str:
    """A tiny 'kernel tree' tarball with kernel.org's single top dir; returns its sha256."""
    makefile = f"VERSION = 6\nPATCHLEVEL = 1\nSUBLEVEL = {sublevel}\nEXTRAVERSION =\n".encode()
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo("linux-6.1/Makefile")
        info.size = len(makefile)
        tar.addfile(info, io.BytesIO(makefile))
    return hashlib.sha256(path.read_bytes()).hexdigest()


class _Handler(http.server.BaseHTTPRequestHandler):
    tarball: bytes = b""
    redirect_to: str = ""
    hits: list[str]

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.hits.append(self.path)
        with contextlib.suppress(OSError):
            if self.path == "/redirect":
                self.send_response(302)
                self.send_header("Location", self.redirect_to)
                self.end_headers()
            elif self.path == "/linux.tar.gz":
                self._send(self.tarball)
            elif self.path == "/big-announced":
                self._send(b"\0" * BIG)
            elif self.path == "/big-unannounced":
                self._send(b"\0" * BIG, announce=False)
            elif self.path == "/trickle":
                self._trickle()

    def _send(self, body: bytes, announce: bool = True) -> None:
        self.send_response(200)
        if announce:
            self.send_header("Content-Length", str(len(body)))
        else:
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)

    def _trickle(self) -> None:
        """The real tarball, one byte every 0.2 s: every read succeeds, the whole never ends soon."""
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.tarball)))
        self.end_headers()
        for i in range(len(self.tarball)):
            self.wfile.write(self.tarball[i:i + 1])
            self.wfile.flush()
            time.sleep(0.2)


@contextlib.contextmanager
def _serve(handler: type[_Handler], tls: ssl.SSLContext | None = None) -> Iterator[str]:
    with local_http_server(handler, tls) as port:
        yield f"{'https' if tls else 'http'}://127.0.0.1:{port}"


@pytest.fixture
def servers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, str, type[_Handler], str]]:
    """(https base, http base, handler class, tarball sha256): both servers share one handler."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                    "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key),
                    "-out", str(cert)], check=True, capture_output=True)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # the client trusts exactly this certificate
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    sha = kernel_tarball(tmp_path / "linux.tar.gz")
    handler = type("Handler", (_Handler,), {"tarball": (tmp_path / "linux.tar.gz").read_bytes(), "hits": []})
    with _serve(handler) as plain, _serve(handler, tls) as secure:
        handler.redirect_to = f"{plain}/linux.tar.gz"
        yield secure, plain, handler, sha


def _spec(url: str, sha: str, max_bytes: int = 4 << 30, max_seconds: float = 3600, read_timeout: float = 60) -> SourceSpec:
    return SourceSpec(SourceKind.tarball, url, sha,
                      limits=DownloadLimits(max_bytes=max_bytes, max_seconds=max_seconds, read_timeout=read_timeout))


def test_downloads_refuse_downgrades_and_keep_to_their_caps(servers: tuple[str, str, type[_Handler], str],
                                                           tmp_path: Path) -> None:
    secure, _plain, handler, sha = servers
    cache = tmp_path / "cache"
    tree = acquire_source(_spec(f"{secure}/linux.tar.gz", sha), pin=PIN, cache=cache).tree  # https itself works
    assert (tree / "Makefile").is_file()

    handler.hits.clear()
    with pytest.raises(KernelSourceError, match="https→http") as caught:
        acquire_source(_spec(f"{secure}/redirect", "1" * 64), pin=PIN, cache=cache)
    assert caught.value.exit_code == 36
    assert handler.hits == ["/redirect"]  # the http target was never fetched

    for path in ("/big-announced", "/big-unannounced"):
        with pytest.raises(KernelSourceError, match="cap") as caught:
            acquire_source(_spec(f"{secure}{path}", "2" * 64, max_bytes=CAP), pin=PIN, cache=cache)
        assert caught.value.exit_code == 37, path

    with pytest.raises(KernelSourceError, match="longer than") as caught:
        acquire_source(_spec(f"{secure}/trickle", "3" * 64, max_seconds=1.5, read_timeout=10), pin=PIN, cache=cache)
    assert caught.value.exit_code == 38
    assert [p.name for p in (cache / "downloads").iterdir()] == [f"{sha}-linux.tar.gz"]  # nothing half-written


# --- the same open file: inotify on the tarball's directory --------------------------------------
_IN_OPEN, _IN_CLOSE_NOWRITE = 0x20, 0x10


class _Watcher:
    """Counts opens of ``name`` in ``directory``; after its first close, renames ``swap`` over it."""

    def __init__(self, directory: Path, name: str, swap: Path) -> None:
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self.libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        assert self.fd >= 0
        assert self.libc.inotify_add_watch(self.fd, os.fsencode(directory), _IN_OPEN | _IN_CLOSE_NOWRITE) >= 0
        self.name, self.target, self.swap = name.encode(), directory / name, swap
        self.opens = 0
        self.swapped = False
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.done.is_set():
            if not select.select([self.fd], [], [], 0.05)[0]:
                continue
            data = os.read(self.fd, 65536)
            while data:
                _wd, mask, _cookie, length = struct.unpack_from("iIII", data)
                name = data[16:16 + length].rstrip(b"\0")
                data = data[16 + length:]
                if name != self.name:
                    continue
                if mask & _IN_OPEN:
                    self.opens += 1
                if mask & _IN_CLOSE_NOWRITE and not self.swapped:
                    os.rename(self.swap, self.target)
                    self.swapped = True

    def close(self) -> None:
        self.done.set()
        self.thread.join(10)
        os.close(self.fd)


def test_the_extracted_tarball_is_the_hashed_one(tmp_path: Path) -> None:
    """Hash, then reopen by name to extract, is a race: here the file is replaced the moment the
    first reader closes it. What is extracted must be what was hashed, read through one open."""
    src = tmp_path / "src"
    src.mkdir()
    sha = kernel_tarball(src / "linux.tar.gz", sublevel=7)
    kernel_tarball(src / "evil.tar.gz", sublevel=66)
    watcher = _Watcher(src, "linux.tar.gz", src / "evil.tar.gz")
    try:
        source = acquire_source(SourceSpec(SourceKind.tarball, str(src / "linux.tar.gz"), sha), pin=PIN,
                                cache=tmp_path / "cache")
    finally:
        watcher.close()
    assert watcher.swapped, "the tarball was never read"
    assert source.info.version == "6.1.7"
    assert "SUBLEVEL = 7" in (source.tree / "Makefile").read_text()
    assert watcher.opens == 1, f"the tarball was opened {watcher.opens} times (checked, then reopened)"
