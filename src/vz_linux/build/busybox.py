"""Static BusyBox for the guest, from Debian's ``busybox-static`` of the target arch
(docs/guest.md, "BusyBox").

The host's arch uses the installed package (``/bin/busybox``). Another arch's package is fetched
and unpacked under the cache once per package version (:func:`debian.unpack_binaries`: nothing
gets installed).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..arch import Architecture
from ..errors import BuildError
from ..fsutil import publish_dir
from ..layout import cache_root
from . import debian

PACKAGE = "busybox-static"
INSTALLED_BINARY = Path("/bin/busybox")

# Applets linked into the initramfs: what init, udhcpc.script, the agent's capability probes and
# the benchmark call, plus the everyday tools a person debugging a guest reaches for.
APPLETS: tuple[str, ...] = (
    "[", "ash", "awk", "base64", "basename", "cat", "chmod", "chown", "chroot", "cp", "cut", "date",
    "dd", "df", "dirname", "dmesg", "du", "echo", "env", "false", "find", "free", "grep", "gunzip",
    "gzip", "halt", "head", "hexdump", "hostname", "id", "ifconfig", "insmod", "ip", "kill",
    "killall", "less", "ln", "ls", "lsmod", "mkdir", "mknod", "mktemp", "modprobe", "mount",
    "mv", "nc", "nproc", "nsenter", "pidof", "ping", "pivot_root", "poweroff",
    "printf", "ps", "pwd", "readlink", "realpath", "reboot", "rm", "rmdir", "route", "sed", "seq",
    "setsid", "sh", "sha256sum", "sleep", "sort", "stat", "switch_root", "sync", "sysctl", "tail",
    "tar", "tee", "test", "timeout", "top", "touch", "tr", "true", "udhcpc", "umount", "uname",
    "uniq", "unshare", "uptime", "vi", "watch", "wc", "wget", "which", "xargs", "zcat",
)


@dataclass(frozen=True)
class Busybox:
    arch: Architecture
    path: Path  # the static binary
    package_version: str  # Debian's, e.g. "1:1.35.0-4+deb12u1+b1"

    @property
    def version(self) -> str:
        """What ``version.json`` records: upstream version plus the exact Debian package."""
        return f"{upstream_version(self.package_version)} (Debian {self.package_version})"


def upstream_version(package_version: str) -> str:
    """``1:1.35.0-4+deb12u1+b1`` -> ``1.35.0`` (epoch and Debian revision removed)."""
    no_epoch = package_version.split(":", 1)[-1]
    return no_epoch.rsplit("-", 1)[0] if "-" in no_epoch else no_epoch


def get_busybox(arch: Architecture) -> Busybox:
    """The static BusyBox for ``arch``; downloads and caches a foreign arch's package once."""
    if arch is Architecture.host():
        return _installed(arch)
    return _downloaded(arch)


def _installed(arch: Architecture) -> Busybox:
    version = debian.installed_versions([PACKAGE], arch).get(PACKAGE)
    if version is None or not INSTALLED_BINARY.is_file():
        raise BuildError(f"{PACKAGE} is not installed", hint="run scripts/setup.sh")
    return Busybox(arch, INSTALLED_BINARY, version)


def _candidate_version(arch: Architecture) -> str:
    version = debian.candidate_versions([PACKAGE], arch).get(PACKAGE)
    if version is None:
        raise BuildError(
            f"apt knows no {PACKAGE}:{arch.debian_arch}",
            hint=f"run scripts/setup.sh (adds the {arch.debian_arch} architecture and runs apt-get update)",
        )
    return version


def _downloaded(arch: Architecture) -> Busybox:
    version = _candidate_version(arch)
    dest = cache_root() / "busybox" / arch.value / version.replace(":", "_")
    binary = dest / "bin" / "busybox"
    if binary.is_file():
        return Busybox(arch, binary, version)
    # Renamed into place: a concurrent or interrupted fetch never leaves a partial tree.
    with publish_dir(dest, prefix=".fetch-") as tree:
        debian.unpack_binaries({PACKAGE: version}, arch, tree)
        if not (tree / "bin" / "busybox").is_file():
            raise BuildError(f"{PACKAGE} {version} ({arch.debian_arch}) has no bin/busybox")
    return Busybox(arch, binary, version)
