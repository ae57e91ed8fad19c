"""The OCI runtime-spec ``config.json`` a container runs from, and the user's volume syntax.

Namespaces follow what the profile's kernel has: the container profile builds without PID, IPC,
UTS, user and time namespaces (docs/profiles.md), so asking crun for them would fail at start. Without
``--net`` the container gets its own network namespace (loopback only); with it, it shares the
VM's network, which is the sandbox boundary anyway.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InvalidConfigError, VolumeError
from ..profiles import KernelProfile

OCI_VERSION = "1.0.2"

# Namespaces each profile's kernel provides (docs/profiles.md: container = mount + network only).
PROFILE_NAMESPACES: dict[KernelProfile, tuple[str, ...]] = {
    KernelProfile.container: ("mount", "network"),
    KernelProfile.developer: ("mount", "network", "pid", "ipc", "uts"),
}

# Docker's default capability set: enough for ordinary images, nothing that reaches past the VM.
DEFAULT_CAPABILITIES = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
)
_MASKED = ("/proc/kcore", "/proc/keys", "/proc/timer_list", "/proc/sched_debug", "/sys/firmware")
_READONLY = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")


@dataclass(frozen=True)
class Volume:
    """``-v HOST:GUEST[:ro|:rw]``: a host directory bind-mounted into the container."""

    source: Path
    destination: str
    read_only: bool = False

    @classmethod
    def parse(cls, text: str) -> Volume:
        parts = text.split(":")
        mode = "rw"
        if len(parts) == 3:
            mode = parts.pop()
        if len(parts) != 2 or not parts[0] or not parts[1] or mode not in ("ro", "rw"):
            raise VolumeError(f"volume {text!r} is not HOST:GUEST[:ro]")
        source, destination = Path(parts[0]).expanduser(), parts[1]
        if not destination.startswith("/"):
            raise VolumeError(f"volume {text!r}: the container path {destination!r} must be absolute")
        if not source.exists():
            raise VolumeError(f"volume {text!r}: host path {source} does not exist",
                              hint="create it first: volumes are shared, not created")
        if not source.is_dir():
            raise VolumeError(f"volume {text!r}: host path {source} is not a directory",
                              hint="virtiofs shares directories; mount the file's parent directory")
        return cls(source=source.resolve(), destination=destination, read_only=mode == "ro")

    def to_json(self) -> dict[str, Any]:
        return {"source": str(self.source), "destination": self.destination, "read_only": self.read_only}


@dataclass(frozen=True)
class ProcessSpec:
    args: tuple[str, ...]
    env: tuple[str, ...]
    cwd: str = "/"

    def __post_init__(self) -> None:
        if not self.args:
            raise InvalidConfigError("no command given and the image defines none",
                                     hint="pass one after --, e.g. `vz oci run IMAGE -- /bin/sh -c 'echo hi'`")
        if not self.cwd.startswith("/"):
            raise InvalidConfigError(f"working directory {self.cwd!r} must be absolute")


def parse_env(items: Iterable[str]) -> tuple[str, ...]:
    out: list[str] = []
    for item in items:
        key, sep, _ = item.partition("=")
        if not sep or not key:
            raise InvalidConfigError(f"environment entry {item!r} is not KEY=VALUE")
        out.append(item)
    return tuple(out)


def merge_env(base: Iterable[str], overrides: Iterable[str]) -> tuple[str, ...]:
    """Image env overridden by the user's ``-e`` (later wins), order kept."""
    merged: dict[str, str] = {}
    for item in (*base, *overrides):
        key, _, value = item.partition("=")
        merged.pop(key, None)
        merged[key] = value
    return tuple(f"{k}={v}" for k, v in merged.items())


def namespaces_for(profile: KernelProfile, network: bool) -> tuple[str, ...]:
    names = PROFILE_NAMESPACES[profile]
    return tuple(n for n in names if not (n == "network" and network))


def runtime_spec(
    process: ProcessSpec,
    *,
    root_path: str,
    namespaces: Sequence[str],
    volumes: Sequence[tuple[str, Volume]] = (),
    cgroups_path: str | None = None,
) -> dict[str, Any]:
    """config.json for crun. ``volumes`` pairs each volume with its source path inside the VM;
    ``cgroups_path`` is the container's own cgroup in the guest (``vz oci stats`` reads it)."""
    mounts: list[dict[str, Any]] = [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
         "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs",
         "options": ["nosuid", "noexec", "nodev", "ro"]},
        # The VM's devpts: a `-t` process runs on the agent's terminal (process.terminal stays
        # false), and ttyname() must find /dev/pts/N inside (docs/oci.md, "Terminals").
        {"destination": "/dev/pts", "type": "bind", "source": "/dev/pts",
         "options": ["rbind", "nosuid", "noexec"]},
    ]
    for guest_source, volume in volumes:
        mounts.append({"destination": volume.destination, "type": "bind", "source": guest_source,
                       "options": ["rbind", "ro" if volume.read_only else "rw"]})
    spec: dict[str, Any] = {
        "ociVersion": OCI_VERSION,
        "process": {
            "terminal": False,
            "user": {"uid": 0, "gid": 0},
            "args": list(process.args),
            "env": list(process.env),
            "cwd": process.cwd,
            "capabilities": {k: list(DEFAULT_CAPABILITIES)
                             for k in ("bounding", "effective", "permitted")},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": True,
        },
        "root": {"path": root_path, "readonly": False},
        # crun reads /proc/self/setgroups before setgroups(); that file exists only with user
        # namespaces, which the container kernel lacks. This annotation says "do setgroups".
        "annotations": {"run.oci.keep_original_groups": "0"},
        "mounts": mounts,
        "linux": {
            "namespaces": [{"type": n} for n in namespaces],
            "maskedPaths": list(_MASKED),
            "readonlyPaths": list(_READONLY),
        },
    }
    if cgroups_path is not None:
        spec["linux"]["cgroupsPath"] = cgroups_path
    if "uts" in namespaces:
        spec["hostname"] = "vz"
    return spec
