"""VM tests: boot real QEMU guests (TCG) from bundles built through the kernel cache.

Every VM of this session (including those started by CLI subprocesses) keeps its work dir under
one session-unique TMPDIR, so the stray-process check at the end can tell our QEMU/virtiofsd
processes from anyone else's on the machine.
"""

from __future__ import annotations

import http.server
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from vz_linux.arch import Architecture
from vz_linux.build.initramfs import minimal_busybox_archive
from vz_linux.profiles import KernelProfile

from ..local_http import local_http_server
from .procs import processes_mentioning


@pytest.fixture(scope="session", autouse=True)
def vm_session_tmpdir() -> Iterator[Path]:
    # Short (Unix socket paths are limited to 108 bytes) and unique to this session.
    d = Path(tempfile.mkdtemp(prefix="vzt-", dir="/tmp"))
    old = os.environ.get("TMPDIR")
    os.environ["TMPDIR"] = str(d)
    tempfile.tempdir = None  # re-read TMPDIR
    try:
        yield d
    finally:
        if old is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = old
        tempfile.tempdir = None
        # No stray processes after the suite: nothing may still run from this session's VM dirs.
        deadline = time.monotonic() + 10
        left = processes_mentioning(str(d))
        while left and time.monotonic() < deadline:
            time.sleep(0.2)
            left = processes_mentioning(str(d))
        shutil.rmtree(d, ignore_errors=True)
        assert not left, f"stray processes after the VM tests: {left}"


@pytest.fixture(scope="session")
def container_bundle(built_bundle) -> Path:
    return Path(built_bundle(KernelProfile.container, Architecture.x86_64))


@pytest.fixture(scope="session")
def container_bundle_arm64(built_bundle) -> Path:
    return Path(built_bundle(KernelProfile.container, Architecture.arm64))


# The one tiny-initramfs builder lives in the library (also used by benchmarks/guests.py).
busybox_archive = minimal_busybox_archive


@pytest.fixture(scope="session")
def host_busybox() -> Path:
    from vz_linux.build.busybox import get_busybox

    return get_busybox(Architecture.x86_64).path


@pytest.fixture
def tiny_initramfs(tmp_path: Path, host_busybox: Path):
    """Factory: /init script text (or None for no /init) -> gzip initramfs path."""
    def make(init: str | None, name: str = "tiny.img") -> Path:
        out = tmp_path / name
        out.write_bytes(busybox_archive(host_busybox, init).to_gzip())
        return out

    return make


@pytest.fixture
def http_server() -> Iterator[tuple[str, bytes]]:
    body = b"vz-linux http smoke body 7f3a\n"

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    with local_http_server(Handler) as port:
        # The guest reaches the host's loopback through QEMU user-net's host alias 10.0.2.2.
        yield f"http://10.0.2.2:{port}/smoke", body
