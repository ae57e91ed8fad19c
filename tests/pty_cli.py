"""A CLI run on a real pseudo-terminal: the test holds the master; the CLI's stdin/stdout/stderr are
the slave, which is also its controlling terminal (``setsid --ctty``), so a size change on the master
really arrives as SIGWINCH and Ctrl-C bytes really pass through a terminal in raw mode."""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import select
import socket
import struct
import subprocess
import termios
import time
from typing import Any

BOOT = 300.0  # generous: TCG on a loaded 2-core host


def set_size(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def comparable(attrs: list[Any]) -> list[Any]:
    """The termios modes that raw mode changes (iflag, oflag, cflag, lflag, speeds)."""
    return attrs[:6]


class PtyCli:
    def __init__(self, argv: list[str], *, rows: int = 30, cols: int = 100,
                 env: dict[str, str] | None = None) -> None:
        self.master, self.slave = os.openpty()
        set_size(self.master, rows, cols)
        self.before = termios.tcgetattr(self.slave)
        self.proc = subprocess.Popen(["setsid", "--ctty", *argv], stdin=self.slave, stdout=self.slave,
                                     stderr=self.slave, close_fds=True, env=env)
        self.out = b""

    def _read(self, timeout: float) -> None:
        if select.select([self.master], [], [], timeout)[0]:
            try:
                self.out += os.read(self.master, 65536)
            except OSError:  # EIO: every slave fd but ours is closed
                time.sleep(timeout)

    def read_until(self, pattern: bytes, timeout: float = BOOT) -> bytes:
        deadline = time.monotonic() + timeout
        while not re.search(pattern, self.out):
            left = deadline - time.monotonic()
            assert left > 0, f"{pattern!r} not seen; output so far: {self.out[-2000:]!r}"
            assert self.proc.poll() is None or self._drained(), f"CLI exited: {self.out[-2000:]!r}"
            self._read(min(left, 0.5))
        return self.out

    def _drained(self) -> bool:
        return bool(select.select([self.master], [], [], 0)[0])

    def write(self, data: bytes) -> None:
        os.write(self.master, data)

    def wait(self, timeout: float = 120) -> int:
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            assert time.monotonic() < deadline, "the CLI did not exit"
            self._read(0.2)
        while self._drained():
            self._read(0.05)
        return self.proc.returncode

    def qemu_pids(self) -> list[int]:
        """QEMU processes below the CLI (setsid may fork once)."""
        found, todo = [], [self.proc.pid]
        while todo:
            out = subprocess.run(["ps", "-o", "pid=,comm=", "--ppid", str(todo.pop())],
                                 capture_output=True, text=True).stdout
            for line in out.splitlines():
                pid, comm = line.split(None, 1)
                todo.append(int(pid))
                if "qemu" in comm:
                    found.append(int(pid))
        return found

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        os.close(self.master)
        os.close(self.slave)


def assert_closed_at_once(port: int) -> None:
    """A connection to a published port with no listener inside is closed, not left hanging."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        s.settimeout(60)
        with contextlib.suppress(ConnectionResetError):
            assert s.recv(10) == b""
