"""Static BusyBox for the guest, from Debian's ``busybox-static`` of the target arch (SPEC §3.4).

The host's arch uses the installed package (``/bin/busybox``). Another arch's package is fetched
with ``apt-get download busybox-static:<arch>`` (nothing gets installed) and unpacked with
``dpkg-deb -x`` under the cache, once per package version.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..arch import Architecture
from ..errors import BuildError
from ..layout import cache_root
from ..run import run

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
    proc = run(["dpkg-query", "-W", "-f", "${Status}\t${Version}", f"{PACKAGE}:{arch.debian_arch}"],
               check=False)
    status, _, version = proc.stdout.decode().partition("\t")
    if proc.returncode != 0 or "install ok installed" not in status or not INSTALLED_BINARY.is_file():
        raise BuildError(f"{PACKAGE} is not installed", hint="run scripts/setup.sh")
    return Busybox(arch, INSTALLED_BINARY, version.strip())


def _candidate_version(arch: Architecture) -> str:
    out = run(["apt-cache", "show", "--no-all-versions", f"{PACKAGE}:{arch.debian_arch}"],
              check=False).stdout.decode()
    match = re.search(r"^Version: (\S+)$", out, re.M)
    if match is None:
        raise BuildError(
            f"apt knows no {PACKAGE}:{arch.debian_arch}",
            hint=f"run scripts/setup.sh (adds the {arch.debian_arch} architecture and runs apt-get update)",
        )
    return match.group(1)


def _downloaded(arch: Architecture) -> Busybox:
    version = _candidate_version(arch)
    dest = cache_root() / "busybox" / arch.value / version.replace(":", "_")
    binary = dest / "bin" / "busybox"
    if binary.is_file():
        return Busybox(arch, binary, version)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".fetch-") as tmp:
        work = Path(tmp)
        run(["apt-get", "download", f"{PACKAGE}:{arch.debian_arch}={version}"], cwd=work)
        debs = sorted(work.glob("*.deb"))
        if len(debs) != 1:
            raise BuildError(f"apt-get download {PACKAGE}:{arch.debian_arch} gave {len(debs)} .deb files")
        got = run(["dpkg-deb", "-f", str(debs[0]), "Version"]).stdout.decode().strip()
        if got != version:
            raise BuildError(f"downloaded {PACKAGE} {got}, expected {version}")
        tree = work / "tree"
        run(["dpkg-deb", "-x", str(debs[0]), str(tree)])
        if not (tree / "bin" / "busybox").is_file():
            raise BuildError(f"{debs[0].name} has no bin/busybox")
        # Rename into place: a concurrent or interrupted fetch never leaves a partial tree.
        try:
            (tree).rename(dest)
        except OSError:
            if not binary.is_file():
                raise
            shutil.rmtree(tree, ignore_errors=True)
    return Busybox(arch, binary, version)
