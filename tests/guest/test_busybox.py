"""BusyBox from Debian's busybox-static, per arch, with its version recorded."""

from __future__ import annotations

import subprocess

import pytest

from vz_linux.arch import Architecture
from vz_linux.build.busybox import Busybox, get_busybox, upstream_version


def test_upstream_version() -> None:
    assert upstream_version("1:1.35.0-4+deb12u1+b1") == "1.35.0"
    assert upstream_version("1.36.1") == "1.36.1"


def test_host_busybox_is_the_installed_package(busyboxes: dict[Architecture, Busybox]) -> None:
    bb = busyboxes[Architecture.host()]
    pkg = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "busybox-static"], capture_output=True,
                         text=True, check=True).stdout
    assert bb.package_version == pkg
    banner = subprocess.run([str(bb.path)], capture_output=True, text=True).stdout.splitlines()[0]
    # "BusyBox v1.35.0 (Debian 1:1.35.0-4+deb12u1+b1) multi-call binary."
    assert banner.startswith(f"BusyBox v{bb.version} ")


@pytest.mark.parametrize("arch", [Architecture.x86_64, Architecture.arm64], ids=str)
def test_busybox_is_static_for_arch(arch: Architecture, busyboxes: dict[Architecture, Busybox]) -> None:
    desc = subprocess.run(["file", "-b", "-L", str(busyboxes[arch].path)], capture_output=True, text=True,
                          check=True).stdout
    assert "statically linked" in desc
    assert ("ARM aarch64" if arch is Architecture.arm64 else "x86-64") in desc


def test_foreign_busybox_cached_and_matches_its_package(busyboxes: dict[Architecture, Busybox]) -> None:
    bb = busyboxes[Architecture.arm64]
    again = get_busybox(Architecture.arm64)
    assert again == bb
    assert bb.path.stat().st_size > 500_000
    assert bb.version.startswith(upstream_version(bb.package_version) + " (Debian ")
