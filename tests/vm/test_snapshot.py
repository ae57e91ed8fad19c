"""LinuxVm.save / LinuxVm.restore on the container bundle under TCG (docs/vm.md, "Snapshots and templates").

One VM is booted for the module and saved once; every test restores from that snapshot (or a damaged
copy of it) into VMs of its own, each with its work dir under the test's tmp_path so the test can
check that no QEMU outlives a failure.
"""

from __future__ import annotations

import os
import secrets
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from vz_linux.errors import (
    SnapshotCorruptError,
    SnapshotError,
    SnapshotMismatchError,
    SnapshotUnsupportedError,
)
from vz_linux.vm.linux_vm import LinuxVm, VmConfig
from vz_linux.vm.snapshot import MANIFEST, STATE

from .procs import processes_mentioning

pytestmark = [pytest.mark.vm, pytest.mark.kernel, pytest.mark.slow, pytest.mark.timeout(300)]

# The clock test needs the snapshot to be older than this, so an unstepped clock would be visibly off.
MIN_SNAPSHOT_AGE_S = 3.0


@dataclass(frozen=True)
class Saved:
    path: Path
    config: VmConfig
    marker: str  # written to /tmp/marker in the guest just before the save
    saved_at: float  # host time.time()


@pytest.fixture(scope="module")
def saved(container_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Saved:
    config = VmConfig.from_bundle(container_bundle, accel="tcg")
    path = tmp_path_factory.mktemp("snapshot") / "snap"
    marker = secrets.token_hex(8)
    with LinuxVm(config) as vm:
        vm.wait_for_agent(120)
        vm.agent.write_file("/tmp/marker", marker.encode())
        # Rekey the guest's RNG right before the save: the kernel then would not rekey on its own for
        # a second of guest time, so restores without a reseed mostly return the same bytes (docs/vm.md).
        vm.agent.restored()
        manifest = vm.save(path)
        # save() resumes the source VM by default: it keeps working.
        assert vm.exec_collect(["cat", "/tmp/marker"]).stdout == marker.encode()
    assert manifest.state.size == (path / STATE).stat().st_size > 0
    return Saved(path, config, marker, time.time())


@pytest.fixture
def isolated(tmp_path: Path) -> Iterator[Path]:
    """A work-dir parent for this test's VMs; afterwards nothing may still run from it."""
    parent = tmp_path / "vms"
    parent.mkdir()
    yield parent
    assert processes_mentioning(str(parent)) == []
    assert list(parent.iterdir()) == [], "a VM work dir was left behind"


def _restore(saved: Saved, parent: Path, config: VmConfig | None = None, path: Path | None = None) -> LinuxVm:
    return LinuxVm.restore(path or saved.path, config or saved.config, timeout=120, workdir_parent=parent)


def test_save_restore_exec_round_trip(saved: Saved, isolated: Path) -> None:
    with _restore(saved, isolated) as vm:
        # The guest's memory came back: the file written before the save is there (a cold boot has none).
        assert vm.exec_collect(["cat", "/tmp/marker"]).stdout == saved.marker.encode()
        r = vm.exec_collect(["sh", "-c", "echo out; echo err >&2; exit 7"])
        assert (r.exit_code, r.stdout, r.stderr) == (7, b"out\n", b"err\n")
        assert vm.restore_times is not None and vm.times is not None
        assert vm.restore_times.snapshot_id == (saved.path / MANIFEST).read_text().split('"id": "')[1][:32]
        # Restored, not booted: the guest was already up for longer than this QEMU has existed.
        assert vm.times.hello.boottime_ns / 1e9 > (time.monotonic_ns() - vm.spawned_ns) / 1e9


def test_restored_clock_is_the_hosts(saved: Saved, isolated: Path) -> None:
    age = time.time() - saved.saved_at
    if age < MIN_SNAPSHOT_AGE_S:
        time.sleep(MIN_SNAPSHOT_AGE_S - age)
    with _restore(saved, isolated) as vm:
        host_before = time.time()
        guest = int(vm.exec_collect(["date", "-u", "+%s"]).stdout)
        host_after = time.time()
        assert host_before - 1 <= guest <= host_after + 1, (guest, host_before)
        hello = vm.agent.hello()
        assert abs(hello.realtime_ns / 1e9 - time.time()) < 1.0
        assert vm.restore_times is not None
        assert vm.restore_times.clock_step_ns / 1e9 >= MIN_SNAPSHOT_AGE_S - 0.5  # it was stale, and stepped


def test_restores_do_not_share_random_output(saved: Saved, isolated: Path) -> None:
    outputs = []
    for _ in range(3):
        with _restore(saved, isolated) as vm:
            r = vm.exec_collect(["sh", "-c", "head -c 32 /dev/urandom | od -An -tx1"])
            assert r.exit_code == 0 and len(r.stdout.split()) == 32
            outputs.append(r.stdout)
    assert len(set(outputs)) == len(outputs), outputs


@pytest.mark.parametrize(("change", "needles"), [
    ({"memory_mib": 512}, ["256 MiB of memory", "512 MiB of memory"]),
    ({"cpus": 2}, ["cpus 1", "cpus 2"]),
    ({"network": True}, ["virtio-net-device"]),
    ({"cmdline_extra": ("loglevel=3",)}, ["loglevel=3"]),
], ids=["memory", "cpus", "network", "cmdline"])
def test_snapshot_of_another_shape_is_refused(saved: Saved, isolated: Path, change: dict[str, object],
                                              needles: list[str]) -> None:
    with pytest.raises(SnapshotMismatchError) as e:
        _restore(saved, isolated, replace(saved.config, **change))  # type: ignore[arg-type]
    assert e.value.exit_code == 81
    for needle in needles:
        assert needle in str(e.value)


def _other_bundle(saved: Saved, root: Path, *, flip_kernel_byte: bool) -> VmConfig:
    root.mkdir()
    kernel, initramfs = root / "vmlinux", root / "initramfs.img"
    shutil.copy(saved.config.kernel, kernel)
    assert saved.config.initramfs is not None
    shutil.copy(saved.config.initramfs, initramfs)
    if flip_kernel_byte:  # same size, other content: only the sha256 tells
        with open(kernel, "r+b") as f:
            f.seek(kernel.stat().st_size // 2)
            b = f.read(1)
            f.seek(-1, os.SEEK_CUR)
            f.write(bytes([b[0] ^ 0xFF]))
    else:
        with open(initramfs, "ab") as f:
            f.write(b"\0" * 512)
    return replace(saved.config, kernel=kernel, initramfs=initramfs)


@pytest.mark.parametrize("flip_kernel_byte", [False, True], ids=["other-initramfs-size", "kernel-same-size"])
def test_snapshot_of_another_bundle_is_refused(saved: Saved, isolated: Path, tmp_path: Path,
                                               flip_kernel_byte: bool) -> None:
    other = _other_bundle(saved, tmp_path / "other", flip_kernel_byte=flip_kernel_byte)
    with pytest.raises(SnapshotMismatchError, match="kernel" if flip_kernel_byte else "initramfs") as e:
        _restore(saved, isolated, other)
    assert e.value.exit_code == 81


def _damaged(saved: Saved, dest: Path, how: str) -> Path:
    shutil.copytree(saved.path, dest)
    state = dest / STATE
    if how == "truncated":
        os.truncate(state, state.stat().st_size // 2)
    elif how == "flipped":
        with open(state, "r+b") as f:
            f.seek(state.stat().st_size // 3)
            f.write(secrets.token_bytes(4096))
    elif how == "no-state":
        state.unlink()
    elif how == "garbage-record":
        (dest / MANIFEST).write_text("{not json")
    return dest


@pytest.mark.parametrize(("how", "needle"), [
    ("truncated", "truncated"),
    ("flipped", "corrupt"),
    ("no-state", "no state"),
    ("garbage-record", "unreadable snapshot.json"),
])
def test_damaged_snapshot_fails_cleanly(saved: Saved, isolated: Path, tmp_path: Path, how: str, needle: str) -> None:
    damaged = _damaged(saved, tmp_path / "damaged", how)
    with pytest.raises(SnapshotCorruptError, match=needle) as e:
        _restore(saved, isolated, path=damaged)
    assert e.value.exit_code == 82


def test_shares_are_refused_before_anything_runs(saved: Saved, isolated: Path, tmp_path: Path) -> None:
    with_share = replace(saved.config, rootfs=tmp_path)
    with pytest.raises(SnapshotUnsupportedError, match="virtiofs") as e:
        _restore(saved, isolated, with_share)
    assert e.value.exit_code == 83
    with pytest.raises(SnapshotUnsupportedError):
        LinuxVm(with_share, workdir_parent=isolated).save(tmp_path / "never")
    assert not (tmp_path / "never").exists()


def test_failed_save_leaves_the_vm_running(saved: Saved, isolated: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with _restore(saved, isolated) as vm:
        with pytest.raises(SnapshotError) as e:
            vm.save(blocker / "snap")
        assert e.value.exit_code == 80 and type(e.value) is SnapshotError
        assert vm.exec_collect(["echo", "alive"]).stdout == b"alive\n"

