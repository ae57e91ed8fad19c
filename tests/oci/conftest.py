"""Fixtures for the OCI tests: an isolated $HOME, a BusyBox rootfs and an OCI image layout built here."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from vz_linux import layout

BUSYBOX = Path("/bin/busybox")  # Debian's busybox-static: a static x86_64 userland for the rootfs


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """$HOME in tmp (so ~/.vz is per test), no VZ_* variables, the checkout's linux/out hidden."""
    for name in list(os.environ):
        if name.startswith(("VZ_LINUX_", "VZ_OCI_")):
            monkeypatch.delenv(name)
    h = tmp_path / "home"
    h.mkdir()
    monkeypatch.setenv("HOME", str(h))
    monkeypatch.setattr(layout, "default_out_root", lambda: tmp_path / "checkout" / "linux" / "out")
    yield h


def make_busybox_rootfs(root: Path) -> Path:
    """bin/busybox + one symlink per applet, and the directories an image usually has."""
    (root / "bin").mkdir(parents=True)
    shutil.copy2(BUSYBOX, root / "bin" / "busybox")
    applets = subprocess.run([str(BUSYBOX), "--list"], capture_output=True, text=True, check=True).stdout
    for applet in applets.split():
        if applet != "busybox":
            os.symlink("busybox", root / "bin" / applet)
    for d in ("etc", "tmp", "proc", "sys", "dev", "root"):
        (root / d).mkdir()
    (root / "etc" / "hello.txt").write_text("hello from the image\n")
    return root


def make_oci_layout(layout_dir: Path, rootfs: Path, tag: str = "latest") -> Path:
    """An OCI image layout built locally with umoci (no registry): one layer holding ``rootfs``."""
    work = layout_dir.parent / f".{layout_dir.name}-bundle"
    umoci = ["umoci"]
    rootless = [] if os.geteuid() == 0 else ["--rootless"]
    subprocess.run([*umoci, "init", "--layout", str(layout_dir)], check=True)
    subprocess.run([*umoci, "new", "--image", f"{layout_dir}:{tag}"], check=True)
    subprocess.run([*umoci, "unpack", *rootless, "--image", f"{layout_dir}:{tag}", str(work)], check=True)
    shutil.rmtree(work / "rootfs")
    shutil.copytree(rootfs, work / "rootfs", symlinks=True)
    subprocess.run([*umoci, "repack", "--image", f"{layout_dir}:{tag}", str(work)], check=True)
    subprocess.run([*umoci, "config", "--image", f"{layout_dir}:{tag}", "--config.env", "IMGVAR=from-image",
                    "--config.workingdir", "/srv", "--config.cmd", "/bin/sh", "--config.cmd", "-c",
                    "--config.cmd", "echo default-cmd in $PWD"], check=True)
    shutil.rmtree(work)
    return layout_dir


@pytest.fixture(scope="session")
def busybox_rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_busybox_rootfs(tmp_path_factory.mktemp("busybox") / "rootfs")


@pytest.fixture(scope="session")
def oci_layout(tmp_path_factory: pytest.TempPathFactory, busybox_rootfs: Path) -> Path:
    return make_oci_layout(tmp_path_factory.mktemp("layout") / "image", busybox_rootfs)
