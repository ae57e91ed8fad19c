"""Snapshots of a running VM: what one records, the QMP steps that save and load it, and the checks
that refuse one made from something else (docs/vm.md, "Snapshots and templates").

A snapshot is a directory:

* ``state`` — QEMU's migration stream (guest RAM, CPU and device state), written by QMP ``migrate``
  to a file descriptor handed to QEMU, read back by ``migrate-incoming`` from one; zero pages are
  skipped, so it is much smaller than the guest's memory;
* ``snapshot.json`` — :class:`SnapshotManifest`: what it was made from (QEMU's version, the VM's
  shape: machine, CPU, accelerator, cpus, memory, kernel command line and device set; the kernel's
  and initramfs's sha256 and size) and the state file's own sha256 and size.

A restore is refused with :class:`SnapshotMismatchError` when any of that differs from the VM asked
for, and :class:`SnapshotCorruptError` when the state is missing, short, fails its checksum or QEMU
cannot load it. :class:`vz_linux.vm.linux_vm.LinuxVm` drives these steps (``save`` / ``restore``).
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal, Protocol

from pydantic import BaseModel, ConfigDict, ValidationError

from ..bundle.metadata import FileInfo
from ..clock import utc_timestamp
from ..errors import (
    SnapshotCorruptError,
    SnapshotError,
    SnapshotMismatchError,
    SnapshotUnsupportedError,
    VzLinuxError,
)
from ..fsutil import write_atomic
from ..hashing import sha256_fd, sha256_file
from .agent_client import AgentHello
from .qemu import QemuVm

SNAPSHOT_FORMAT: Final = "vz-linux-snapshot/1"
MANIFEST = "snapshot.json"
STATE = "state"
_FD_NAME = "vz-snapshot"
# QEMU throttles a migration to 128 MiB/s by default (it assumes a network shared with other guests);
# a local file takes what the disk gives.
_UNTHROTTLED = 1 << 40
_POLL_S = 0.002
_MISMATCH_HINT = "restore it with the VM it was made from, or save a new one (templates rebuild themselves)"
_CORRUPT_HINT = "save it again (templates are rebuilt by themselves)"

# QEMU options that take a value (the rest of our argv are flags); see QemuVm.argv().
_VALUE_OPTIONS = frozenset({"-M", "-cpu", "-accel", "-smp", "-m", "-kernel", "-initrd", "-append", "-chardev",
                            "-serial", "-mon", "-device", "-drive", "-netdev", "-object", "-global", "-incoming"})
# Recorded as their own shape fields, or (kernel, initramfs) by digest: not part of the device set.
_NOT_DEVICES = frozenset({"-M", "-cpu", "-accel", "-smp", "-m", "-kernel", "-initrd", "-append", "-incoming"})


class Qmp(Protocol):
    """What the snapshot steps need of a QMP connection (``qemu.qmp.legacy.QEMUMonitorProtocol``)."""

    def cmd(self, cmd: str, **kwds: object) -> Any: ...

    def send_fd_scm(self, fd: int) -> None: ...


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class VmShape(_Model):
    """Everything about a VM that a restored guest depends on, with per-boot paths replaced by names."""

    arch: str
    machine: str
    cpu: str
    accel: str
    cpus: int
    memory_mib: int
    cmdline: str
    devices: tuple[str, ...]


class SnapshotManifest(_Model):
    format: Literal["vz-linux-snapshot/1"]
    id: str
    created: str
    qemu: str  # "7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)": QMP query-version of the saving QEMU
    shape: VmShape
    kernel: FileInfo
    initramfs: FileInfo | None
    state: FileInfo
    agent_version: str | None = None
    agent_protocol_revision: int | None = None
    guest_release: str | None = None


@dataclass(frozen=True)
class RestoreTimes:
    """Host ``time.monotonic_ns()`` stamps of one restore (spawn and agent-ready are in ``BootTimes``)."""

    snapshot_id: str
    load_started_ns: int  # migrate-incoming sent
    loaded_ns: int  # the guest runs again
    synced_ns: int  # the agent stepped the guest's clock and reseeded its RNG
    clock_step_ns: int  # host time minus the guest's clock before the step (how stale it was)


def _options(argv: Sequence[str]) -> list[tuple[str, str | None]]:
    out: list[tuple[str, str | None]] = []
    i = 0
    while i < len(argv):
        if argv[i] in _VALUE_OPTIONS and i + 1 < len(argv):
            out.append((argv[i], argv[i + 1]))
            i += 2
        else:
            out.append((argv[i], None))
            i += 1
    return out


def vm_shape(qemu: QemuVm) -> VmShape:
    """The shape of a described VM: two VMs with equal shapes can restore each other's snapshots."""
    per_boot = {qemu.serial_log: "SERIAL", qemu.serial_socket: "SERIAL", qemu.agent_socket: "AGENT",
                qemu.qmp_socket: "QMP"}
    per_boot.update({share.socket: f"SHARE{i}" for i, share in enumerate(qemu.shares)})
    per_boot.update({d.path: f"DISK{i}-{d.path.stat().st_size}B" for i, d in enumerate(qemu.disks) if d.swappable})

    def named(value: str) -> str:
        for path, name in per_boot.items():
            if path is not None:  # as spelled in QEMU's options too (commas doubled)
                value = value.replace(str(path).replace(",", ",,"), name).replace(str(path), name)
        return value

    opts = [(o, None if v is None else named(v)) for o, v in _options(qemu.argv()[1:])]
    value = {o: v or "" for o, v in opts if o in _NOT_DEVICES}
    devices = tuple(o if v is None else f"{o} {v}" for o, v in opts if o not in _NOT_DEVICES)
    # The TCG cache size is the host's business: a guest saved with one restores under another.
    accel = ",".join(p for p in value["-accel"].split(",") if not p.startswith("tb-size="))
    return VmShape(arch=qemu.arch.value, machine=value["-M"], cpu=value["-cpu"], accel=accel,
                   cpus=qemu.cpus, memory_mib=qemu.memory_mib, cmdline=qemu.kernel_cmdline(), devices=devices)


def refuse_shares(tags: Sequence[str], what: str) -> None:
    if tags:
        raise SnapshotUnsupportedError(
            f"cannot {what} a VM with virtiofs shares ({', '.join(tags)}): QEMU cannot migrate vhost-user-fs",
            hint="boot it cold (vz-linux run --cold, or without --rootfs-dir)")


def _cmd(qmp: Qmp, name: str, **args: object) -> Any:
    try:
        return qmp.cmd(name, **args)
    except Exception as e:  # qemu.qmp raises its own hierarchy (ExecuteError, EOF, ...): all mean "refused"
        raise SnapshotError(f"QEMU failed QMP {name}: {e}") from e


def qemu_version(qmp: Qmp) -> str:
    v = _cmd(qmp, "query-version")
    q = v["qemu"]
    return f"{q['major']}.{q['minor']}.{q['micro']} ({str(v.get('package', '')).strip()})"


# --- saving ---------------------------------------------------------------------------------------
def save_state(qmp: Qmp, state: Path, timeout: float) -> None:
    """Pause the guest and have QEMU write its whole state to the new file ``state``."""
    fd = os.open(state, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        _cmd(qmp, "migrate-set-parameters", **{"max-bandwidth": _UNTHROTTLED})
        qmp.send_fd_scm(fd)
        _cmd(qmp, "getfd", fdname=_FD_NAME)
        _cmd(qmp, "stop")
        _cmd(qmp, "migrate", uri=f"fd:{_FD_NAME}")
        deadline = time.monotonic() + timeout
        while (status := _cmd(qmp, "query-migrate")).get("status") != "completed":
            if status.get("status") in ("failed", "cancelled"):
                raise SnapshotError(f"QEMU could not save the VM: {status.get('error-desc', status['status'])}")
            if time.monotonic() > deadline:
                with contextlib.suppress(SnapshotError):
                    _cmd(qmp, "migrate_cancel")
                raise SnapshotError(f"QEMU did not finish saving the VM within {timeout:.0f}s")
            time.sleep(_POLL_S)
        os.fsync(fd)
    finally:
        os.close(fd)


def write_manifest(stage: Path, qemu: QemuVm, qemu_version: str, hello: AgentHello | None) -> SnapshotManifest:
    """Record what the state in ``stage`` was made from (``snapshot.json``, written last)."""
    manifest = SnapshotManifest(
        format=SNAPSHOT_FORMAT, id=uuid.uuid4().hex, created=utc_timestamp(), qemu=qemu_version,
        shape=vm_shape(qemu), kernel=file_info(qemu.kernel),
        initramfs=file_info(qemu.initramfs) if qemu.initramfs is not None else None,
        state=FileInfo.of(stage / STATE),
        agent_version=hello.agent_version if hello else None,
        agent_protocol_revision=hello.protocol_revision if hello else None,
        guest_release=hello.release if hello else None,
    )
    write_atomic(stage / MANIFEST, (manifest.model_dump_json(indent=2) + "\n").encode())
    return manifest


# One process hashes a kernel once: a template's key and its restore's verification both need it.
_digests: dict[tuple[str, int, int, int], FileInfo] = {}


def file_info(path: Path) -> FileInfo:
    """sha256 and size of ``path``, remembered for this process while its inode, size and mtime hold."""
    st = path.stat()
    key = (str(path), st.st_ino, st.st_size, st.st_mtime_ns)
    if key not in _digests:
        _digests[key] = FileInfo(sha256=sha256_file(path), size=st.st_size)
    return _digests[key]


# --- restoring ------------------------------------------------------------------------------------
@dataclass
class OpenSnapshot:
    """A snapshot opened for a restore: its record and its state file (the descriptor QEMU reads)."""

    path: Path
    manifest: SnapshotManifest
    state_fd: int

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.state_fd)


def open_snapshot(path: Path) -> OpenSnapshot:
    """Read ``snapshot.json`` and open ``state`` through one directory descriptor, so both come from
    the same snapshot even while a template is replaced beside us; a short state is refused here."""
    try:
        dir_fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        raise SnapshotCorruptError(f"{path} is not a snapshot: {e.strerror}", hint=_CORRUPT_HINT) from e
    try:
        manifest = _read_manifest(path, dir_fd)
        try:
            fd = os.open(STATE, os.O_RDONLY | os.O_CLOEXEC, dir_fd=dir_fd)
        except OSError as e:
            raise SnapshotCorruptError(f"snapshot {path} has no state: {e.strerror}", hint=_CORRUPT_HINT) from e
    finally:
        os.close(dir_fd)
    size = os.fstat(fd).st_size
    if size != manifest.state.size:
        os.close(fd)
        what = "truncated" if size < manifest.state.size else "longer than recorded"
        raise SnapshotCorruptError(f"snapshot {path} is {what}: its state has {size} of {manifest.state.size} "
                                   "bytes", hint=_CORRUPT_HINT)
    return OpenSnapshot(path, manifest, fd)


def _read_manifest(path: Path, dir_fd: int) -> SnapshotManifest:
    try:
        fd = os.open(MANIFEST, os.O_RDONLY | os.O_CLOEXEC, dir_fd=dir_fd)
        with open(fd, "rb") as f:
            return SnapshotManifest.model_validate(json.loads(f.read()))
    except OSError as e:
        raise SnapshotCorruptError(f"{path} is not a snapshot: {MANIFEST}: {e.strerror}", hint=_CORRUPT_HINT) from e
    except (ValueError, ValidationError) as e:
        first = str(e).splitlines()[0]
        raise SnapshotCorruptError(f"snapshot {path} has an unreadable {MANIFEST}: {first}",
                                   hint=_CORRUPT_HINT) from e


def _mismatch(snap: OpenSnapshot, theirs: str, ours: str) -> SnapshotMismatchError:
    return SnapshotMismatchError(f"snapshot {snap.path} was made with {theirs}, this VM has {ours}", hint=_MISMATCH_HINT)


def check_file_sizes(snap: OpenSnapshot, kernel: Path, initramfs: Path | None) -> None:
    """The cheap half of the bundle check, before QEMU starts: sizes (the sha256s are checked by
    :class:`Verifier` while QEMU loads)."""
    for name, path, recorded in (("kernel", kernel, snap.manifest.kernel),
                                 ("initramfs", initramfs, snap.manifest.initramfs)):
        if (path is None) != (recorded is None):
            raise _mismatch(snap, f"{'an' if recorded else 'no'} {name}", f"{'an' if path else 'no'} {name}")
        if path is not None and recorded is not None and path.stat().st_size != recorded.size:
            raise _mismatch(snap, f"another {name} ({recorded.size} bytes, sha256 {recorded.sha256[:16]})",
                            f"{path} ({path.stat().st_size} bytes)")


def _describe(field: str, value: object) -> str:
    return f"{value} MiB of memory" if field == "memory_mib" else f"{field} {value}"


def check_shape(snap: OpenSnapshot, shape: VmShape, qemu: str) -> None:
    """Refuse a snapshot made by another QEMU or for a VM of another shape (naming what differs)."""
    if snap.manifest.qemu != qemu:
        raise _mismatch(snap, f"QEMU {snap.manifest.qemu}", f"QEMU {qemu}")
    theirs, ours = snap.manifest.shape.model_dump(), shape.model_dump()
    for field in VmShape.model_fields:
        if field == "devices" and theirs[field] != ours[field]:
            only_theirs = sorted(set(theirs[field]) - set(ours[field])) or ["(same devices, other order)"]
            only_ours = sorted(set(ours[field]) - set(theirs[field])) or ["(none)"]
            raise _mismatch(snap, f"devices {'; '.join(only_theirs)}", f"devices {'; '.join(only_ours)}")
        if theirs[field] != ours[field]:
            raise _mismatch(snap, _describe(field, theirs[field]), _describe(field, ours[field]))


class Verifier:
    """Hashes a snapshot's inputs in a thread while QEMU loads it: the kernel and initramfs against
    their recorded sha256s, and the state through the very descriptor QEMU reads (``pread``: QEMU's
    offset is untouched). :meth:`check` joins it and raises what it found."""

    def __init__(self, snap: OpenSnapshot, kernel: Path, initramfs: Path | None) -> None:
        self._snap = snap
        self._files = [("kernel", kernel, snap.manifest.kernel)]
        if initramfs is not None and snap.manifest.initramfs is not None:
            self._files.append(("initramfs", initramfs, snap.manifest.initramfs))
        self._error: VzLinuxError | None = None
        self._thread = threading.Thread(target=self._run, name="vz-snapshot-verify", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        snap = self._snap
        try:
            for name, path, recorded in self._files:
                actual = file_info(path).sha256
                if actual != recorded.sha256:
                    self._error = _mismatch(snap, f"another {name} (sha256 {recorded.sha256[:16]})",
                                            f"{path} (sha256 {actual[:16]})")
                    return
            actual = sha256_fd(snap.state_fd)
            if actual != snap.manifest.state.sha256:
                self._error = SnapshotCorruptError(
                    f"snapshot {snap.path} is corrupt: its state's sha256 is {actual[:16]}, recorded "
                    f"{snap.manifest.state.sha256[:16]}", hint=_CORRUPT_HINT)
        except OSError as e:
            self._error = SnapshotCorruptError(f"cannot read snapshot {snap.path}: {e.strerror or e}")

    def check(self) -> None:
        self._thread.join()
        if self._error is not None:
            raise self._error


def load_state(qmp: Qmp, fd: int, timeout: float) -> None:
    """Have a QEMU started with ``-incoming defer`` read the state from ``fd``, then run the guest."""
    _cmd(qmp, "migrate-incoming", uri=f"fd:{fd}")
    deadline = time.monotonic() + timeout
    while (status := _cmd(qmp, "query-status")["status"]) == "inmigrate":
        if time.monotonic() > deadline:
            raise SnapshotCorruptError(f"QEMU did not finish loading the snapshot within {timeout:.0f}s")
        time.sleep(_POLL_S)
    if status != "running":
        _cmd(qmp, "cont")  # saved paused: the record of the saving VM's run state says so
