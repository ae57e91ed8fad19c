"""Fixtures for the OCI tests: an isolated $HOME, a BusyBox rootfs and an OCI image layout built here, and a
real registry (tests/local_registry.py) holding a two-platform image the tests push."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from vz_linux import layout

from ..local_registry import LocalRegistry, local_registry

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


def add_index(layout_dir: Path, tag: str, platforms: dict[str, str]) -> str:
    """Tag ``tag`` in the layout as an image index over existing tags: ``{oci arch: tag}``.
    Returns the index's digest. (umoci has no command for an index; the JSON is the image spec's.)"""
    index_path = layout_dir / "index.json"
    index = json.loads(index_path.read_text())
    by_tag = {m["annotations"]["org.opencontainers.image.ref.name"]: m for m in index["manifests"]}
    manifests = [{k: by_tag[t][k] for k in ("mediaType", "digest", "size")}
                 | {"platform": {"os": "linux", "architecture": arch}} for arch, t in platforms.items()]
    blob = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                       "manifests": manifests}).encode()
    digest = hashlib.sha256(blob).hexdigest()
    (layout_dir / "blobs" / "sha256" / digest).write_bytes(blob)
    index["manifests"].append({"mediaType": "application/vnd.oci.image.index.v1+json",
                               "digest": f"sha256:{digest}", "size": len(blob),
                               "annotations": {"org.opencontainers.image.ref.name": tag}})
    index_path.write_text(json.dumps(index))
    return f"sha256:{digest}"


@dataclass(frozen=True)
class PushedImage:
    """An image the test pushed to the local registry: a two-platform index (amd64, arm64) whose
    images differ in ``/etc/platform``, plus the amd64 manifest's digest."""

    registry: LocalRegistry
    ref: str  # HOST/REPO:TAG of the index
    index_digest: str
    digests: dict[str, str]  # oci arch -> manifest digest
    auth_file: Path


def push_image(registry: LocalRegistry, work: Path, rootfs: Path, repo: str = "library/busybox",
               tag: str = "1.36") -> PushedImage:
    layout_dir = work / "layout"
    digests = {}
    for arch in ("amd64", "arm64"):
        tree = work / f"rootfs-{arch}"
        shutil.copytree(rootfs, tree, symlinks=True)
        (tree / "etc" / "platform").write_text(f"linux/{arch}\n")
        if not layout_dir.exists():
            make_oci_layout(layout_dir, tree, tag=arch)
        else:
            _add_tag(layout_dir, tree, arch)
        subprocess.run(["umoci", "config", "--image", f"{layout_dir}:{arch}", "--architecture", arch], check=True)
        index = json.loads((layout_dir / "index.json").read_text())
        digests[arch] = next(m["digest"] for m in index["manifests"]
                             if m["annotations"]["org.opencontainers.image.ref.name"] == arch)
    index_digest = add_index(layout_dir, tag, {a: a for a in digests})
    auth = registry.auth_file(work / "auth.json")
    ref = f"{registry.host}/{repo}:{tag}"
    subprocess.run(["skopeo", "copy", "--quiet", "--all", "--authfile", str(auth), "--dest-tls-verify=false",
                    f"oci:{layout_dir}:{tag}", f"docker://{ref}"], check=True)
    return PushedImage(registry, ref, index_digest, digests, auth)


def _add_tag(layout_dir: Path, rootfs: Path, tag: str) -> None:
    work = layout_dir.parent / f".{layout_dir.name}-{tag}"
    rootless = [] if os.geteuid() == 0 else ["--rootless"]
    subprocess.run(["umoci", "new", "--image", f"{layout_dir}:{tag}"], check=True)
    subprocess.run(["umoci", "unpack", *rootless, "--image", f"{layout_dir}:{tag}", str(work)], check=True)
    shutil.rmtree(work / "rootfs")
    shutil.copytree(rootfs, work / "rootfs", symlinks=True)
    subprocess.run(["umoci", "repack", "--image", f"{layout_dir}:{tag}", str(work)], check=True)
    subprocess.run(["umoci", "config", "--image", f"{layout_dir}:{tag}", "--config.cmd", "/bin/sh"], check=True)
    shutil.rmtree(work)


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRegistry]:
    """Debian's docker-registry on 127.0.0.1 with htpasswd auth (tests/local_registry.py)."""
    with local_registry(tmp_path_factory.mktemp("registry")) as reg:
        yield reg


@pytest.fixture(scope="session")
def pushed_image(registry: LocalRegistry, tmp_path_factory: pytest.TempPathFactory,
                 busybox_rootfs: Path) -> PushedImage:
    return push_image(registry, tmp_path_factory.mktemp("push"), busybox_rootfs)
