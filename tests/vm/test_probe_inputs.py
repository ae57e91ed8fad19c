"""What the host makes for the live probes (vm/probes.py), checked without a guest."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from vz_linux.errors import ProbeInputError
from vz_linux.profiles import KernelCapability as C
from vz_linux.vm import probes
from vz_linux.vm.linux_vm import VmShare
from vz_linux.vm.probes import (
    BTRFS_IMAGE,
    BTRFS_IMAGE_BYTES,
    TOKEN_FILE,
    make_btrfs_image,
    mkfs_btrfs,
    one_line,
    probe_argv,
    probe_inputs,
    share_tag,
)

BTRFS_MAGIC_OFFSET = 0x10000 + 0x40  # primary superblock at 64 KiB, magic 0x40 into it


def _dump_super(image: Path) -> str:
    btrfs = shutil.which("btrfs") or shutil.which("btrfs", path="/usr/bin:/bin")
    assert btrfs is not None, "btrfs-progs is installed by scripts/setup.sh"
    assert Path(mkfs_btrfs()).is_file()
    return subprocess.run([btrfs, "inspect-internal", "dump-super", str(image)], capture_output=True,
                          text=True, check=True).stdout


def test_btrfs_image_is_a_mixed_btrfs(tmp_path: Path) -> None:
    image = make_btrfs_image(tmp_path / "b.img")
    assert image.stat().st_size == BTRFS_IMAGE_BYTES
    with open(image, "rb") as f:
        f.seek(BTRFS_MAGIC_OFFSET)
        assert f.read(8) == b"_BHRfS_M"
    sb = _dump_super(image)
    assert "MIXED_GROUPS" in sb and "vz-probe" in sb
    assert image.stat().st_blocks * 512 < BTRFS_IMAGE_BYTES  # sparse: cheap to make and to share


def test_btrfs_image_failure_is_a_typed_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The real mkfs.btrfs refuses a device under its 16 MiB minimum: one typed error, no file left.
    monkeypatch.setattr(probes, "BTRFS_IMAGE_BYTES", 1 << 20)
    with pytest.raises(ProbeInputError, match=r"cannot make the btrfs probe image: .*too small") as e:
        make_btrfs_image(tmp_path / "tiny.img")
    assert e.value.exit_code == 25 and not (tmp_path / "tiny.img").exists()
    small = tmp_path / "exists.img"
    small.write_bytes(b"x")
    with pytest.raises(FileExistsError):
        make_btrfs_image(small)  # never overwrites
    assert small.read_bytes() == b"x"


def test_inputs_only_when_a_probe_needs_them(tmp_path: Path) -> None:
    with probe_inputs([C.io_uring, C.seccomp], parent=tmp_path) as none:
        assert none is None
    existing = (VmShare("vz-mount-0", tmp_path),)
    with probe_inputs([C.virtiofs, C.btrfs_snapshots], existing, parent=tmp_path) as inputs:
        assert inputs is not None
        assert inputs.tag == "vz-mount-1" and inputs.guest_dir == "/mnt/vz-mount-1"
        assert (inputs.directory / TOKEN_FILE).read_text() == inputs.token + "\n"
        assert len(inputs.token) == 32 and (inputs.directory / BTRFS_IMAGE).is_file()
        share = inputs.share()
        assert share.read_only and share.source == inputs.directory
        assert probe_argv(C.virtiofs, inputs) == ["/sbin/vz-agent", "--probe", "virtiofs",
                                                  "/mnt/vz-mount-1/token", inputs.token]
        assert probe_argv(C.btrfs_snapshots, inputs)[-1] == "/mnt/vz-mount-1/btrfs.img"
        made = inputs.directory
    assert not made.exists()  # removed with the block
    with probe_inputs([C.virtiofs], parent=tmp_path) as only_token:
        assert only_token is not None and not (only_token.directory / BTRFS_IMAGE).exists()
    assert probe_argv(C.io_uring, None) == ["/sbin/vz-agent", "--probe", "io_uring"]


def test_share_tag_takes_the_first_gap() -> None:
    assert share_tag([]) == "vz-mount-0"
    shares = [VmShare("vz-mount-0", Path("/")), VmShare("rootfs", Path("/"))]
    assert share_tag(shares) == "vz-mount-1"


def test_evidence_is_one_bounded_printable_line() -> None:
    assert one_line(b"first\n\nlast line\n") == "last line"
    assert one_line("bell\x07 esc\x1b[31m") == "bell? esc?[31m"
    long = one_line("x" * 1000)
    assert len(long) == 160 and long.endswith("…")
    assert one_line(b"\xff\xfe") == "\ufffd\ufffd"  # not valid UTF-8: replaced, never raised


def test_probe_input_error_has_its_own_code() -> None:
    assert ProbeInputError.exit_code == 25
