"""Fixtures for the userland tests (initramfs, BusyBox, crun, bundle assembly): all real parts."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from vz_linux.arch import Architecture
from vz_linux.build.agent import build_agent
from vz_linux.build.busybox import Busybox, get_busybox
from vz_linux.build.cpio import decompress
from vz_linux.build.crun import OciRuntime, ensure_crun
from vz_linux.build.initramfs import InitramfsInputs

ARCHES = (Architecture.x86_64, Architecture.arm64)


@pytest.fixture(scope="session")
def busyboxes() -> dict[Architecture, Busybox]:
    return {a: get_busybox(a) for a in ARCHES}


@pytest.fixture(scope="session")
def agents() -> dict[Architecture, Path]:
    return {a: build_agent(a) for a in ARCHES}


@pytest.fixture(scope="session")
def cruns() -> dict[Architecture, OciRuntime]:
    # Cached per machine: minutes on the first run, instant afterwards.
    return {a: ensure_crun(a) for a in ARCHES}


@pytest.fixture(scope="session")
def host_inputs(busyboxes: dict[Architecture, Busybox], agents: dict[Architecture, Path]) -> InitramfsInputs:
    host = Architecture.host()
    return InitramfsInputs.default(busybox=busyboxes[host].path, agent=agents[host])


def cpio_listing(image: Path, verbose: bool = False) -> str:
    """What Debian's cpio lists for an initramfs (uncompressed, gzip or lz4)."""
    data = decompress(image.read_bytes())
    args = ["cpio", "-t", "--quiet"] + (["-v", "--numeric-uid-gid"] if verbose else [])
    return subprocess.run(args, input=data, capture_output=True, check=True).stdout.decode()


def extract(image: Path, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run(["cpio", "-idm", "--quiet"], input=decompress(image.read_bytes()), cwd=dest,
                   check=True)
    return dest
