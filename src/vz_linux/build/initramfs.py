"""What goes into ``initramfs.img`` (docs/guest.md, "Initramfs"), declared as data and written
by :mod:`cpio`.

Layout: ``/init``; ``/bin/busybox`` with applet symlinks in ``/bin``; ``/sbin/vz-agent``;
``/etc`` (resolv.conf, udhcpc.script, passwd, group, hosts); the empty mount points init uses;
``/dev/console`` and ``/dev/null`` so PID 1 has a console before devtmpfs is mounted.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import BuildError, InitramfsCompressionError
from ..fsutil import write_atomic
from ..layout import source_checkout
from .busybox import APPLETS
from .cpio import Archive, Compression

AGENT_PATH = "sbin/vz-agent"
BUSYBOX_PATH = "bin/busybox"
EMPTY_DIRS: tuple[str, ...] = (
    "dev", "proc", "sys", "tmp", "run", "root", "mnt", "mnt/lower", "mnt/rw", "mnt/root",
    "usr", "usr/bin", "usr/sbin", "var", "lib",
)
# Small files written here rather than kept as files: they hold no logic.
STATIC_FILES: dict[str, tuple[str, int]] = {
    "etc/passwd": ("root:x:0:0:root:/root:/bin/sh\n", 0o644),
    "etc/group": ("root:x:0:\n", 0o644),
    "etc/hosts": ("127.0.0.1\tlocalhost\n::1\tlocalhost\n", 0o644),
}


@dataclass(frozen=True)
class InitramfsInputs:
    busybox: Path
    agent: Path
    # Directory holding init and etc/ (linux/initramfs/ of the checkout).
    source_dir: Path

    @classmethod
    def default(cls, *, busybox: Path, agent: Path) -> InitramfsInputs:
        top = source_checkout()
        if top is None:
            raise BuildError("cannot find linux/initramfs/: not running from a source checkout")
        return cls(busybox=busybox, agent=agent, source_dir=top / "linux" / "initramfs")


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise BuildError(f"cannot read the {what} {path}: {e.strerror}") from None


def build_archive(inputs: InitramfsInputs) -> Archive:
    """The initramfs as an :class:`Archive` (not yet serialised)."""
    ar = Archive()
    for d in ("bin", "sbin", "etc", "usr/share", "usr/share/udhcpc", *EMPTY_DIRS):
        ar.add_dir(d)
    ar.add_file("init", _read(inputs.source_dir / "init", "init script"), 0o755)
    ar.add_file("etc/resolv.conf", _read(inputs.source_dir / "etc" / "resolv.conf", "resolv.conf"))
    ar.add_file("etc/udhcpc.script", _read(inputs.source_dir / "etc" / "udhcpc.script", "udhcpc script"),
                0o755)
    # udhcpc's compiled-in default script path, so a bare `udhcpc` works in a debug shell too.
    ar.add_symlink("usr/share/udhcpc/default.script", "/etc/udhcpc.script")
    for path, (text, mode) in STATIC_FILES.items():
        ar.add_file(path, text.encode(), mode)
    ar.add_file(BUSYBOX_PATH, _read(inputs.busybox, "BusyBox binary"), 0o755)
    for applet in APPLETS:
        ar.add_symlink(f"bin/{applet}", "busybox")
    ar.add_file(AGENT_PATH, _read(inputs.agent, "guest agent"), 0o755)
    # The kernel opens /dev/console for PID 1 before anything can mount devtmpfs.
    ar.add_char_device("dev/console", 5, 1, 0o600)
    ar.add_char_device("dev/null", 1, 3, 0o666)
    return ar


def write_initramfs(inputs: InitramfsInputs, out: Path, *, mtime: int | None = None,
                    compression: Compression = Compression.none) -> Path:
    """Write the newc archive to ``out``, uncompressed by default (same inputs, same bytes)."""
    write_atomic(out, build_archive(inputs).to_image(compression, mtime))
    return out


def check_kernel_unpacks(compression: Compression, config_text: str) -> None:
    """Refuse a compression the kernel (its resolved ``.config``) has no decompressor for: it would
    panic at boot with "junk in compressed archive" or find no /init."""
    symbol = compression.kconfig
    if symbol is not None and f"CONFIG_{symbol}=y" not in config_text.splitlines():
        raise InitramfsCompressionError(
            f"the kernel cannot unpack a {compression} initramfs: CONFIG_{symbol} is not set",
            hint="choose --initramfs-compression none (the default) or build a kernel with it")


def minimal_busybox_archive(busybox: Path, init: str | None = None) -> Archive:
    """A bare initramfs: BusyBox as /bin/sh, /dev/console and, unless None, an /init shell script.

    For boot floors and failure tests (no agent, no vz init): the smallest guest that still boots.
    """
    ar = Archive()
    for d in ("bin", "dev", "proc", "sys"):
        ar.add_dir(d)
    ar.add_file("bin/busybox", busybox.read_bytes(), 0o755)
    ar.add_symlink("bin/sh", "busybox")
    ar.add_char_device("dev/console", 5, 1, 0o600)
    if init is not None:
        ar.add_file("init", init.encode(), 0o755)
    return ar
