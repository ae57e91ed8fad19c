"""``ext4_root`` proved by a boot of its own (vz_linux.vm.root_probe): from an ext4 disk made with
``mke2fs -d``, ``root=/dev/vda``, the agent answering from it and reading the host's token back.
Planted failures (a disk without the token, a disk that is not ext4) fail, and ``verify --boot``
fails naming the probe."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from vz_linux.arch import Architecture
from vz_linux.errors import CapabilityProbeError
from vz_linux.profiles import KernelCapability
from vz_linux.vm import root_probe
from vz_linux.vm.boot_verify import verify_boot
from vz_linux.vm.linux_vm import VmConfig
from vz_linux.vm.root_probe import (
    ROOT_IMAGE_BYTES,
    TOKEN_FILE,
    boot_from_image,
    make_root_image,
    probe_ext4_root,
    root_mount,
)

MOUNTINFO = """\
1 1 0:2 / / rw - rootfs rootfs rw
25 1 254:0 / / rw,noatime - ext4 /dev/vda rw
26 25 0:5 / /dev rw - devtmpfs devtmpfs rw
"""


def test_root_mount_is_the_topmost_mount_on_slash() -> None:
    assert root_mount(MOUNTINFO) == ("/dev/vda", "ext4")
    assert root_mount(MOUNTINFO.splitlines()[0]) == ("rootfs", "rootfs")
    # hostile or truncated lines are skipped, never trusted
    assert root_mount("garbage\n1 2 3\n- ext4 /dev/vda\n" + "x" * 10000) is None
    assert root_mount("25 1 254:0 / /mnt rw - ext4 /dev/vda rw") is None


def test_image_is_ext4_with_the_token_and_the_init_layout(tmp_path: Path) -> None:
    image = make_root_image(tmp_path / "root.img", "t0ken")
    assert image.stat().st_size == ROOT_IMAGE_BYTES
    with open(image, "rb") as f:
        f.seek(1024 + 0x38)
        assert f.read(2) == b"\x53\xef"  # ext2/3/4 superblock magic
    r = subprocess.run(["/sbin/debugfs", "-R", f"cat /{TOKEN_FILE}", str(image)], capture_output=True, text=True)
    assert r.stdout.strip() == "t0ken", r.stderr
    r = subprocess.run(["/sbin/debugfs", "-R", "stat /bin", str(image)], capture_output=True, text=True)
    assert "Type: symlink" in r.stdout and '"/run/vz/bin"' in r.stdout, r.stdout
    untokened = make_root_image(tmp_path / "none.img", None)
    r = subprocess.run(["/sbin/debugfs", "-R", f"cat /{TOKEN_FILE}", str(untokened)], capture_output=True, text=True)
    assert "not found" in r.stderr


@pytest.mark.vm
@pytest.mark.kernel
@pytest.mark.slow
@pytest.mark.parametrize("arch", [Architecture.x86_64, Architecture.arm64])
def test_probe_passes_from_the_disk(arch: Architecture, container_bundle: Path, container_bundle_arm64: Path) -> None:
    bundle = container_bundle if arch is Architecture.x86_64 else container_bundle_arm64
    outcome = probe_ext4_root(VmConfig.from_bundle(bundle, accel="tcg"), 180)
    assert outcome.passed, outcome.evidence
    assert outcome.evidence.startswith("ext4_root: / is ext4 on /dev/vda (mountinfo), token ")
    assert outcome.evidence.endswith("read from the disk")


@pytest.mark.vm
@pytest.mark.kernel
@pytest.mark.slow
def test_planted_disk_without_the_token_fails(container_bundle: Path, tmp_path: Path) -> None:
    image = make_root_image(tmp_path / "root.img", "a-different-token")
    outcome = boot_from_image(VmConfig.from_bundle(container_bundle, accel="tcg"), image, "the-host-token", 120)
    assert not outcome.passed
    assert "/ is ext4 on /dev/vda, but /vz-root-token does not hold the host's token" in outcome.evidence


@pytest.mark.vm
@pytest.mark.kernel
@pytest.mark.slow
def test_planted_disk_that_is_not_ext4_leaves_the_guest_in_the_initramfs(container_bundle: Path,
                                                                          tmp_path: Path) -> None:
    image = tmp_path / "zeros.img"
    image.write_bytes(b"\0" * ROOT_IMAGE_BYTES)  # what a kernel without ext4 sees too: nothing to mount
    outcome = boot_from_image(VmConfig.from_bundle(container_bundle, accel="tcg"), image, "tok", 120)
    assert not outcome.passed
    assert outcome.evidence.startswith("/ is ") and "not ext4 on /dev/vda" in outcome.evidence, outcome.evidence


@pytest.mark.vm
@pytest.mark.kernel
@pytest.mark.slow
def test_verify_boot_fails_naming_ext4_root(container_bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Plant a disk without the token: the real boot, agent and checks run; only the input is wrong.
    monkeypatch.setattr(root_probe, "make_root_image", lambda image, token: make_root_image(image, None))
    with pytest.raises(CapabilityProbeError) as e:
        verify_boot(container_bundle, accel="tcg", timeout=180)
    message = e.value.one_line()
    assert "ext4_root (/ is ext4 on /dev/vda, but /vz-root-token does not hold" in message
    assert e.value.exit_code == 44
    # Every other probe still passed: only ext4_root is named.
    result = verify_boot(container_bundle, accel="tcg", timeout=180, check=False)
    assert [r.capability for r in result.failed] == [KernelCapability.ext4_root]


@pytest.mark.vm
@pytest.mark.kernel
@pytest.mark.slow
def test_without_boot_probes_ext4_root_is_left_out(container_bundle: Path) -> None:
    result = verify_boot(container_bundle, accel="tcg", timeout=180, boot_probes=False)
    assert result.ok and KernelCapability.ext4_root not in {r.capability for r in result.rows}
