"""One virtiofsd per share per VM boot, as a context manager (docs/vm.md).

Debian's QEMU 7.2 ships the C daemon at ``/usr/lib/qemu/virtiofsd``; it serves one connection and
exits, so every boot needs a fresh one. Readiness is a fact, not a sleep: we bind and listen on the
vhost-user socket ourselves and hand the listening fd to the daemon (``--fd``), so the socket
accepts QEMU's connection the moment the daemon has been spawned.

A read-only share must be read-only for the *host's* filesystem, not only by the guest's mount
flags (a guest root can remount): the C daemon has no read-only option, so it then runs under
bubblewrap, in a mount namespace where the source is a read-only bind (docs/security.md).
"""

from __future__ import annotations

import contextlib
import enum
import os
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import InvalidConfigError, ToolMissingError
from ..run import spawn

VIRTIOFSD = Path("/usr/lib/qemu/virtiofsd")
BWRAP = Path("/usr/bin/bwrap")


class CacheMode(enum.StrEnum):
    auto = "auto"
    always = "always"
    none = "none"


def fuse_opt_value(value: str) -> str:
    """``value`` escaped for one ``-o key=value`` item: the daemon's option parser (libfuse's
    fuse_opt) splits on ``,`` and takes ``\\`` as an escape, so both are escaped."""
    return value.replace("\\", "\\\\").replace(",", "\\,")


@dataclass(frozen=True)
class VirtiofsdConfig:
    source: Path
    socket_path: Path
    cache: CacheMode = CacheMode.auto
    xattr: bool = False
    read_only: bool = False  # enforced on the host: a read-only bind under bubblewrap
    binary: Path = VIRTIOFSD
    bwrap: Path = BWRAP

    def argv(self, fd: int) -> list[str]:
        opts = [f"source={fuse_opt_value(str(self.source))}", f"cache={self.cache.value}",
                "xattr" if self.xattr else "no_xattr"]
        daemon = [str(self.binary), f"--fd={fd}", "-o", ",".join(opts)]
        if not self.read_only:
            return daemon
        src = str(self.source)
        # The whole host as it is, except the source: bound read-only over itself. The daemon's own
        # sandbox bind-mounts the source again; a bind of a read-only bind stays read-only.
        return [str(self.bwrap), "--die-with-parent", "--bind", "/", "/", "--ro-bind", src, src,
                "--dev", "/dev", "--proc", "/proc", *daemon]


@dataclass(frozen=True)
class RunningVirtiofsd:
    config: VirtiofsdConfig
    process: subprocess.Popen[bytes]
    log_path: Path | None


def _check(config: VirtiofsdConfig) -> None:
    if not config.source.is_dir():
        raise InvalidConfigError(f"share source {config.source} is not a directory")
    if not config.binary.exists():
        raise ToolMissingError(f"{config.binary} not found", hint="install qemu-system-common (scripts/setup.sh)")
    if config.read_only and not config.bwrap.exists():
        raise ToolMissingError(f"{config.bwrap} not found: a read-only share needs it",
                               hint="install bubblewrap (scripts/setup.sh)")


@contextlib.contextmanager
def virtiofsd(config: VirtiofsdConfig, *, log_path: Path | None = None) -> Iterator[RunningVirtiofsd]:
    """Start virtiofsd serving ``config.source`` on ``config.socket_path``; stop and reap it on exit."""
    _check(config)
    with contextlib.ExitStack() as stack:
        with contextlib.suppress(FileNotFoundError):
            config.socket_path.unlink()
        listener = stack.enter_context(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
        listener.bind(str(config.socket_path))
        stack.callback(lambda: config.socket_path.unlink(missing_ok=True))
        listener.listen(1)
        fd = listener.fileno()
        os.set_inheritable(fd, True)
        log = stack.enter_context(open(log_path, "ab")) if log_path is not None else None
        proc = stack.enter_context(
            spawn(config.argv(fd), pass_fds=[fd], stdout=log or subprocess.DEVNULL,
                  stderr=log or subprocess.DEVNULL)
        )
        # The daemon holds its own copy of the listening fd; ours can go.
        yield RunningVirtiofsd(config, proc, log_path)
