"""`vz oci run` from a container template (docs/oci.md, "Fast start"): real QEMU (TCG), the container
bundle's kernel, agent and static crun, the image as a read-only ext4 on virtio-blk.

The template is made on first use (in the machine's build cache, keyed by bundle, crun and VM shape),
so the first test here pays one cold boot + save; every run after restores it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.procs import live_processes_mentioning
from vz_linux import layout
from vz_linux.oci.blockimage import ensure_block_image
from vz_linux.oci.config import RuntimeConfig
from vz_linux.oci.container import ContainerRequest, ContainerVm, prepare_container, store_for
from vz_linux.oci.guest import GUEST_IMAGE, IMAGE_DEVICE
from vz_linux.profiles import KernelProfile

from .test_oci_vm import VZ, container_bundle, vz, vz_env  # noqa: F401  (the session's bundle and `vz`)

pytestmark = [pytest.mark.vm, pytest.mark.kernel, pytest.mark.slow]

Vz = Callable[..., subprocess.CompletedProcess[str]]
RESTORED = "restored from template"


@pytest.fixture
def image(tmp_path: Path, busybox_rootfs: Path) -> Path:
    """A BusyBox image with a file only this test's image has."""
    root = tmp_path / "image"
    shutil.copytree(busybox_rootfs, root, symlinks=True)
    (root / "etc" / "only-here.txt").write_text(f"block image {tmp_path.name}\n")
    return root


def _qemus_using(text: str) -> list[str]:
    return live_processes_mentioning("qemu-system", text)


def test_run_from_template_runs_the_image_from_its_block_device(
        tmp_path: Path, image: Path, container_bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    cache = layout.cache_root()
    for k in [k for k in os.environ if k.startswith(("VZ_LINUX_", "VZ_OCI_"))]:
        monkeypatch.delenv(k)
    (tmp_path / "home").mkdir()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("VZ_LINUX_CONTAINER_BUNDLE_DIR", str(container_bundle))
    monkeypatch.setenv("VZ_LINUX_CACHE_DIR", str(cache))
    cfg = RuntimeConfig(linux_profile=KernelProfile.container, data_dir=tmp_path / "data")
    req = ContainerRequest(image=str(image), command=("sh", "-c", "cat /etc/only-here.txt; grep ' / ' /proc/mounts"))
    state, bundle = prepare_container(cfg, req)
    cdir = store_for(cfg).dir(state.id)
    out: list[bytes] = []
    with ContainerVm(cfg, state, bundle, cdir, cold=False) as cvm:
        assert cvm.restored and cvm.vm.restore_times is not None
        block = ensure_block_image(image)
        assert not block.built  # the run built it; it is cached
        argv = " ".join(cvm.vm.qemu.argv() if cvm.vm.qemu else [])
        assert str(block.path) in argv and "read-only=on" in argv and "vhost-user-fs" not in argv
        mounts = cvm.vm.exec_collect(["cat", "/proc/mounts"], timeout=60).stdout.decode()
        assert f"{IMAGE_DEVICE} {GUEST_IMAGE} ext4 ro" in mounts, mounts
        assert "virtiofs" not in mounts, mounts
        code = cvm.run(out.append, out.append, log=False)
        # A guest root cannot write the image: the disk is read-only in QEMU, whatever the guest mounts.
        attack = cvm.vm.exec_collect(["sh", "-c", f"mount -o remount,rw {GUEST_IMAGE}; "
                                      f"echo pwned > {GUEST_IMAGE}/etc/only-here.txt; "
                                      f"dd if=/dev/zero of={IMAGE_DEVICE} bs=4096 count=1 conv=fsync"], timeout=60)
    text = b"".join(out).decode()
    assert code == 0, text
    assert text.startswith(f"block image {tmp_path.name}\n")
    assert "overlay" in text and f"lowerdir={GUEST_IMAGE}" in text  # the container's root is the overlay on it
    assert attack.exit_code != 0
    again = ensure_block_image(image)
    assert not again.built and again.path == block.path  # unchanged: still the intact cached image
    assert not _qemus_using(str(block.path))


def test_template_run_honours_env_workdir_and_exit_codes(vz: Vz, image: Path) -> None:  # noqa: F811
    p = vz("--verbose", "oci", "run", "--rm", "--kernel-profile", "container", "-e", "GREETING=hello there",
           "-w", "/work", str(image), "--", "sh", "-c", 'echo "$GREETING"; pwd; cat /etc/only-here.txt')
    assert p.returncode == 0, p.stderr
    assert RESTORED in p.stderr
    assert p.stdout.splitlines() == ["hello there", "/work", f"block image {image.parent.name}"]
    p = vz("oci", "run", "--rm", "--kernel-profile", "container", str(image), "--", "sh", "-c", "exit 3")
    assert p.returncode == 3, p.stderr
    p = vz("oci", "run", "--rm", "--kernel-profile", "container", str(image), "--", "nonexistent-cmd")
    assert p.returncode == 127
    assert "nonexistent-cmd: command not found" in p.stderr


def test_cold_flag_and_volumes_boot_cold(vz: Vz, image: Path, tmp_path: Path) -> None:  # noqa: F811
    vol = tmp_path / "vol"
    vol.mkdir()
    (vol / "from-host.txt").write_text("host says hi\n")
    p = vz("--verbose", "oci", "run", "--rm", "--kernel-profile", "container", "-v", f"{vol}:/data", str(image),
           "--", "sh", "-c", "cat /data/from-host.txt; grep -c virtiofs /proc/mounts")
    assert p.returncode == 0, p.stderr
    assert "booting cold: volumes (-v) need virtiofs shares, which block snapshots" in p.stderr
    assert RESTORED not in p.stderr
    assert p.stdout.splitlines()[0] == "host says hi"
    p = vz("--verbose", "oci", "run", "--rm", "--cold", "--kernel-profile", "container", str(image), "--",
           "cat", "/etc/only-here.txt")
    assert p.returncode == 0, p.stderr
    assert RESTORED not in p.stderr
    assert p.stdout == f"block image {image.parent.name}\n"


CONCURRENT = 'cat /proc/sys/kernel/random/uuid; touch /tmp/mark-"$1"; sleep 3; ls /tmp'


def test_concurrent_runs_each_get_their_own_vm(vz_env: dict[str, str], image: Path, tmp_path: Path) -> None:  # noqa: F811
    env = dict(vz_env, VZ_OCI_DATA_DIR=str(tmp_path / "oci"))
    procs = [subprocess.Popen([str(VZ), "--verbose", "oci", "run", "--rm", "--kernel-profile", "container", str(image),
                               "--", "sh", "-c", CONCURRENT, "run", str(n)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for n in (1, 2)]
    results = [p.communicate(timeout=600) for p in procs]
    for n, (p, (out, err)) in enumerate(zip(procs, results, strict=True), start=1):
        assert p.returncode == 0, err
        assert RESTORED in err
        lines = out.split()
        assert lines[1:] == [f"mark-{n}"], out  # its own /tmp: the other run is another VM
    assert results[0][0].split()[0] != results[1][0].split()[0]  # reseeded RNGs: different uuids
    assert not _qemus_using(str(tmp_path / "oci"))
    assert not _qemus_using(str(ensure_block_image(image).path))
