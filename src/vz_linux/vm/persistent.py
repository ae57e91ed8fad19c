"""Persistent Linux VMs: ``vz vm linux run|ls|rm`` over the descriptors ``init`` writes (docs/vm.md,
"Persistent VMs").

``run`` boots the descriptor's kernel and initramfs with the VM's ext4 disk as virtio-blk
``/dev/vda`` and ``root=/dev/vda``: the initramfs init mounts it read-write, switches into it and
starts the agent from a tmpfs copy (docs/guest.md), so what the guest writes stays on the disk.
Before booting, the descriptor's recorded checksums must still match the artifacts (unless
``force``). While a VM runs, its disk is ``flock``-ed: a second ``run`` or an ``rm`` is refused.
Before QEMU is stopped the guest syncs and powers off through the agent, so its writes are on the
disk file.

The guest is untrusted: the disk file is the user's (the path the descriptor records, made by
``init``), never a host path built from guest output; the only guest output read here is bounded
(the command's streamed output goes to the caller's sinks; the mount check reads a capped buffer).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..arch import Architecture
from ..errors import VmBusyError, VmDiskError, VmNotFoundError, VzLinuxError
from .agent_protocol import PowerAction, Stream
from .descriptor import (
    DESCRIPTOR_SUFFIX,
    DISK_SUFFIX,
    check_name,
    default_vm_dir,
    read_descriptor,
    verify_descriptor,
)
from .linux_vm import LinuxVm, VmConfig
from .qemu import Disk

ROOT_DEVICE = "/dev/vda"
_EXT4_MAGIC_OFFSET = 1024 + 0x38  # superblock at 1024, s_magic at 0x38
_EXT4_MAGIC = b"\x53\xef"
GUEST_BIN = "/run/vz/bin"  # the initramfs BusyBox inside the new root (linux/initramfs/init)
Sink = Callable[[bytes], None]


@dataclass(frozen=True)
class RunRequest:
    name: str
    vm_dir: Path | None = None
    command: tuple[str, ...] = ()
    force: bool = False  # boot even when the recorded checksums no longer match
    cpus: int = 1
    memory_mib: int = 256
    network: bool = False
    agent_timeout: float = 120.0
    exec_timeout: float | None = None


@dataclass(frozen=True)
class PersistentVm:
    """A VM as its descriptor describes it."""

    name: str
    descriptor_path: Path
    descriptor: dict[str, Any]

    @property
    def disk(self) -> Path:
        return Path(str(self.descriptor.get("disk", {}).get("path", "")))

    @property
    def root(self) -> dict[str, Any]:
        root = self.descriptor.get("root")
        return root if isinstance(root, dict) else {}


def _dir(vm_dir: Path | None) -> Path:
    return (vm_dir or default_vm_dir()).expanduser()


def load(name: str, vm_dir: Path | None = None) -> PersistentVm:
    check_name(name)
    path = _dir(vm_dir) / f"{name}{DESCRIPTOR_SUFFIX}"
    if not path.is_file():
        raise VmNotFoundError(f"no VM {name!r} in {_dir(vm_dir)}",
                              hint="create it with `vz vm linux init --name NAME --rootfs DIR` (see `vz vm linux ls`)")
    return PersistentVm(name, path, read_descriptor(path))


def has_ext4(disk: Path) -> bool:
    try:
        with open(disk, "rb") as f:
            f.seek(_EXT4_MAGIC_OFFSET)
            return f.read(2) == _EXT4_MAGIC
    except OSError:
        return False


@contextlib.contextmanager
def disk_lock(vm: PersistentVm, what: str) -> Iterator[None]:
    """Hold the VM's disk for one ``run`` (or ``rm``); a VM already holding it is :class:`VmBusyError`."""
    try:
        fd = os.open(vm.disk, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        raise VmDiskError(f"VM {vm.name}: cannot open its disk {vm.disk}: {e.strerror}",
                          hint="re-create it with `vz vm linux init --force`") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise VmBusyError(f"cannot {what} VM {vm.name}: it is running (its disk is in use)") from None
            raise
        yield
    finally:
        os.close(fd)


def _config(vm: PersistentVm, req: RunRequest) -> VmConfig:
    d = vm.descriptor
    arch = Architecture.parse(str(d.get("arch", Architecture.host().value)))
    return VmConfig(kernel=Path(str(d["kernel"])), initramfs=Path(str(d["initramfs"])), arch=arch,
                    cpus=req.cpus, memory_mib=req.memory_mib, network=req.network,
                    disks=(Disk(vm.disk),), cmdline_extra=(f"root={ROOT_DEVICE}", f"vz.hostname={vm.name}"),
                    serial_log=vm.descriptor_path.with_name(f"{vm.name}.serial.log"))


def _check_root(lvm: LinuxVm, vm: PersistentVm) -> None:
    """The agent runs on the disk, not in the initramfs (else nothing the command writes persists)."""
    r = lvm.agent.exec_collect([f"{GUEST_BIN}/cat", "/proc/self/mounts"], timeout=30, max_output=1 << 16)
    if not any(line.split()[:3] == [ROOT_DEVICE, "/", "ext4"] for line in r.stdout.decode(errors="replace").splitlines()):
        raise VmDiskError(f"VM {vm.name} did not boot from its disk (the guest could not mount {ROOT_DEVICE})",
                          hint=f"see {lvm.serial_log}; a bundle built before root= support needs a rebuild")


def _shutdown(lvm: LinuxVm) -> None:
    """Flush the guest's writes to the disk, then power off (the agent syncs again)."""
    with contextlib.suppress(VzLinuxError):
        lvm.agent.exec_collect([f"{GUEST_BIN}/sync"], timeout=60)
        lvm.agent.poweroff(PowerAction.REBOOT, timeout=30)
        if lvm.process is not None:
            with contextlib.suppress(Exception):
                lvm.process.wait(30)


def run_vm(req: RunRequest, on_stdout: Sink, on_stderr: Sink) -> int:
    """Boot the VM from its disk, run the command (if any) and return its exit code."""
    vm = load(req.name, req.vm_dir)
    if req.force:
        read_descriptor(vm.descriptor_path)
    else:
        verify_descriptor(vm.descriptor_path)
    if vm.root.get("filesystem") != "ext4" or not has_ext4(vm.disk):
        raise VmDiskError(f"VM {vm.name}'s disk {vm.disk} holds no ext4 root filesystem",
                          hint=f"re-create it: vz vm linux init --name {vm.name} --rootfs DIR --force")
    code = 0
    with disk_lock(vm, "run"), LinuxVm(_config(vm, req)) as lvm:
        lvm.wait_for_agent(req.agent_timeout)
        _check_root(lvm, vm)
        if req.command:
            code = _stream(lvm, req.command, on_stdout, on_stderr, req.exec_timeout)
        _shutdown(lvm)
    return code


def _stream(lvm: LinuxVm, argv: Sequence[str], on_stdout: Sink, on_stderr: Sink, timeout: float | None) -> int:
    env = {"PATH": f"/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:{GUEST_BIN}", "HOME": "/root"}
    with lvm.exec_stream(list(argv), env=env, timeout=timeout) as stream:
        for chunk in stream:
            (on_stderr if chunk.stream is Stream.STDERR else on_stdout)(chunk.data)
        result = stream.result
    assert result is not None
    if result.timed_out:
        raise VmDiskError(f"{argv[0]} did not finish within {timeout}s and was killed")
    return result.shell_exit_code


@dataclass(frozen=True)
class VmRow:
    name: str
    profile: str
    disk: str
    size_bytes: int
    used_bytes: int
    source: str
    status: str  # running | stopped | stale (checksums changed) | broken
    created: str

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "profile": self.profile, "disk": self.disk, "size_bytes": self.size_bytes,
                "used_bytes": self.used_bytes, "source": self.source, "status": self.status, "created": self.created}


def _status(vm: PersistentVm) -> str:
    try:
        with disk_lock(vm, "inspect"):
            pass
    except VmBusyError:
        return "running"
    except VzLinuxError:
        return "broken"
    try:
        verify_descriptor(vm.descriptor_path)
    except VzLinuxError:
        return "stale"
    return "stopped"


def list_vms(vm_dir: Path | None = None) -> list[VmRow]:
    rows = []
    d = _dir(vm_dir)
    for path in sorted(d.glob(f"*{DESCRIPTOR_SUFFIX}")) if d.is_dir() else []:
        name = path.name.removesuffix(DESCRIPTOR_SUFFIX)
        try:
            vm = load(name, d)
        except VzLinuxError:
            rows.append(VmRow(name, "?", "?", 0, 0, "?", "broken", "?"))
            continue
        try:
            used = vm.disk.stat().st_blocks * 512
        except OSError:
            used = 0
        rows.append(VmRow(name, str(vm.descriptor.get("profile")), str(vm.disk),
                          int(vm.descriptor.get("disk", {}).get("size_bytes", 0)), used,
                          str(vm.root.get("source", "(empty disk)")), _status(vm), str(vm.descriptor.get("created"))))
    return rows


def remove_vm(name: str, vm_dir: Path | None = None) -> list[Path]:
    """Delete the descriptor, the disk ``init`` made for it (``<dir>/<name>.img``, only that path) and
    its serial log; a running VM is refused. Returns what was removed."""
    vm = load(name, vm_dir)
    own_disk = (_dir(vm_dir) / f"{name}{DISK_SUFFIX}").absolute()
    removed = []
    lock = disk_lock(vm, "remove") if vm.disk.is_file() else contextlib.nullcontext()
    with lock:
        for path in (own_disk, vm.descriptor_path.with_name(f"{name}.serial.log"), vm.descriptor_path):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed.append(path)
    return removed
