"""Registry images and persistent VMs in real guests: QEMU (TCG) booting the container bundle (built
through the kernel cache, installed into a per-session $HOME), a real registry on 127.0.0.1 holding
an image this session pushed, and a real ext4 disk made by mke2fs.

Every command is the installed `vz` console script in its own process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from vz_linux import layout
from vz_linux.profiles import KernelProfile

from .conftest import PushedImage

pytestmark = [pytest.mark.vm, pytest.mark.kernel, pytest.mark.slow]

VZ = Path(sys.executable).parent / "vz"
TIMEOUT = 300
Vz = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture(scope="module")
def vz_home(tmp_path_factory: pytest.TempPathFactory, built_bundle: Callable[..., Path]) -> dict[str, str]:
    bundle = built_bundle(KernelProfile.container)
    home = tmp_path_factory.mktemp("vm-home")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("VZ_LINUX_", "VZ_OCI_", "REGISTRY_", "DOCKER_"))}
    env.update(HOME=str(home), VZ_LINUX_CONTAINER_BUNDLE_DIR=str(bundle), VZ_LINUX_CACHE_DIR=str(layout.cache_root()))
    return env


@pytest.fixture
def vz(vz_home: dict[str, str], tmp_path: Path) -> Iterator[Vz]:
    env = dict(vz_home, VZ_OCI_DATA_DIR=str(tmp_path / "oci"))

    def run(*args: str, auth: Path | None = None) -> subprocess.CompletedProcess[str]:
        e = dict(env, REGISTRY_AUTH_FILE=str(auth)) if auth is not None else env
        p = subprocess.run([str(VZ), *args], env=e, capture_output=True, text=True, timeout=TIMEOUT)
        assert "Traceback" not in p.stderr, p.stderr
        return p

    yield run


def test_run_from_the_registry_then_offline(vz: Vz, pushed_image: PushedImage) -> None:
    p = vz("oci", "run", "--rm", "--kernel-profile", "container", pushed_image.ref, "--",
           "sh", "-c", "cat /etc/platform /etc/hello.txt", auth=pushed_image.auth_file)
    assert p.returncode == 0, p.stderr
    assert p.stdout == "linux/amd64\nhello from the image\n"  # the guest's platform, picked from the index
    # Pinned by digest, from the store only: no credentials needed, nothing pulled.
    repo = pushed_image.ref.rsplit(":", 1)[0]
    p = vz("oci", "run", "--rm", "--pull=never", "--kernel-profile", "container",
           f"{repo}@{pushed_image.digests['amd64']}", "--", "cat", "/etc/platform")
    assert p.returncode == 0 and p.stdout == "linux/amd64\n", p.stderr


def test_persistent_vm_keeps_what_it_wrote(vz: Vz, busybox_rootfs: Path, tmp_path: Path) -> None:
    vms = tmp_path / "vms"
    p = vz("vm", "linux", "init", "--name", "dev1", "--output-dir", str(vms), "--kernel-profile", "container",
           "--rootfs", str(busybox_rootfs), "--disk-size-gb", "1")
    assert p.returncode == 0, p.stderr
    assert "created" in p.stdout and "ext4" in p.stdout
    disk = vms / "dev1.img"
    assert disk.stat().st_size == 1 << 30 and disk.stat().st_blocks * 512 < 64 << 20  # sparse
    p = vz("vm", "linux", "run", "--output-dir", str(vms), "dev1", "--",
           "sh", "-c", "cat /etc/hello.txt; echo persisted-$((6*7)) > /root/note; mount | grep ' / '")
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("hello from the image\n") and "/dev/vda on / type ext4" in p.stdout
    p = vz("vm", "linux", "run", "--output-dir", str(vms), "dev1", "--", "sh", "-c", "cat /root/note; exit 5")
    assert p.returncode == 5 and p.stdout == "persisted-42\n", p.stderr
    assert not (busybox_rootfs / "root" / "note").exists()  # on the disk, not in the source tree
    rows = json.loads(vz("vm", "linux", "ls", "--output-dir", str(vms), "--json").stdout)
    assert [(r["name"], r["status"], r["source"], r["profile"]) for r in rows] == [
        ("dev1", "stopped", str(busybox_rootfs.resolve()), "container")]
    # Refused over the existing disk; then removed with its disk.
    p = vz("vm", "linux", "init", "--name", "dev1", "--output-dir", str(vms), "--kernel-profile", "container",
           "--rootfs", str(busybox_rootfs))
    assert p.returncode == 87 and len(p.stderr.strip().splitlines()) == 1, p.stderr
    p = vz("vm", "linux", "rm", "--output-dir", str(vms), "dev1")
    assert p.returncode == 0 and not disk.exists() and not (vms / "dev1.linux.json").exists(), p.stderr
    p = vz("vm", "linux", "run", "--output-dir", str(vms), "dev1", "--", "true")
    assert p.returncode == 85 and "no VM 'dev1'" in p.stderr


def test_persistent_vm_from_a_registry_image(vz: Vz, pushed_image: PushedImage, tmp_path: Path) -> None:
    vms = tmp_path / "vms"
    p = vz("vm", "linux", "init", "--name", "reg", "--output-dir", str(vms), "--kernel-profile", "container",
           "--image", pushed_image.ref, "--disk-size-gb", "1", auth=pushed_image.auth_file)
    assert p.returncode == 0, p.stderr
    desc = json.loads((vms / "reg.linux.json").read_text())
    assert desc["root"]["source"] == f"{pushed_image.ref}@{pushed_image.digests['amd64']}"
    p = vz("vm", "linux", "run", "--output-dir", str(vms), "reg", "--", "cat", "/etc/platform")
    assert p.returncode == 0 and p.stdout == "linux/amd64\n", p.stderr


def test_persistent_vm_refuses_changed_artifacts_and_empty_disks(vz: Vz, busybox_rootfs: Path,
                                                                 tmp_path: Path) -> None:
    vms = tmp_path / "vms"
    assert vz("vm", "linux", "init", "--name", "d", "--output-dir", str(vms), "--kernel-profile", "container",
              "--rootfs", str(busybox_rootfs), "--disk-size-gb", "1").returncode == 0
    desc = json.loads((vms / "d.linux.json").read_text())
    desc["sha256_initramfs"] = "0" * 64  # as if the installed bundle changed since init
    (vms / "d.linux.json").write_text(json.dumps(desc))
    p = vz("vm", "linux", "run", "--output-dir", str(vms), "d", "--", "true")
    assert p.returncode == 14 and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert json.loads(vz("vm", "linux", "ls", "--output-dir", str(vms), "--json").stdout)[0]["status"] == "stale"
    p = vz("vm", "linux", "run", "--force", "--output-dir", str(vms), "d", "--", "cat", "/etc/hello.txt")
    assert p.returncode == 0 and p.stdout == "hello from the image\n", p.stderr
    # A VM made without a root filesystem has nothing to boot: one line, its own code, no VM started.
    assert vz("vm", "linux", "init", "--name", "empty", "--output-dir", str(vms), "--kernel-profile", "container",
              "--disk-size-gb", "1").returncode == 0
    p = vz("vm", "linux", "run", "--output-dir", str(vms), "empty", "--", "true")
    assert p.returncode == 86 and "no ext4" in p.stderr and len(p.stderr.strip().splitlines()) == 1


def test_a_running_vm_is_busy(vz: Vz, vz_home: dict[str, str], busybox_rootfs: Path, tmp_path: Path) -> None:
    vms = tmp_path / "vms"
    assert vz("vm", "linux", "init", "--name", "busy", "--output-dir", str(vms), "--kernel-profile", "container",
              "--rootfs", str(busybox_rootfs), "--disk-size-gb", "1").returncode == 0
    env = dict(vz_home, VZ_OCI_DATA_DIR=str(tmp_path / "oci"))
    with subprocess.Popen([str(VZ), "vm", "linux", "run", "--output-dir", str(vms), "busy", "--",
                           "sh", "-c", "echo up; sleep 30"], env=env, stdout=subprocess.PIPE, text=True) as first:
        assert first.stdout is not None
        assert first.stdout.readline() == "up\n"  # booted and running its command
        for args in (("run", "--output-dir", str(vms), "busy", "--", "true"), ("rm", "--output-dir", str(vms), "busy")):
            p = vz("vm", "linux", *args)
            assert p.returncode == 88 and "running" in p.stderr and len(p.stderr.strip().splitlines()) == 1
        rows = json.loads(vz("vm", "linux", "ls", "--output-dir", str(vms), "--json").stdout)
        assert rows[0]["status"] == "running"
        assert first.wait(TIMEOUT) == 0
    assert (vms / "busy.img").exists()
    assert vz("vm", "linux", "rm", "--output-dir", str(vms), "busy").returncode == 0
