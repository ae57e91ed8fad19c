"""The host side of ``-t`` / ``-i`` (docs/vm.md, "Terminals and ports").

``-t`` runs the command on a pseudo-terminal in the guest (the agent's TTY exec); with ``-i`` our
stdin is forwarded, and when it is a terminal it is put in raw mode, so keys such as Ctrl-C reach
the guest as bytes and its terminal driver turns them into signals. SIGWINCH becomes a RESIZE. The
terminal is restored on every way out of the ``with`` block: normal exit, an exception (the VM
killed: the agent channel breaks), or SIGTERM/SIGHUP (run_cli turns them into an exception).
Without ``-t`` stdin and stdout stay pipes; ``-i`` alone streams stdin and closes it at EOF.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import termios
import threading
import tty
from types import FrameType, TracebackType
from typing import Any

from ..errors import AgentError, TerminalError
from ..vm.agent_client import ExecControl

_READ = 64 << 10
_Handler = Any  # what signal.signal returns: a callable, an int constant or None


def terminal_size(fd: int) -> tuple[int, int] | None:
    """(rows, columns) of the terminal on ``fd``, or None when it is not one."""
    try:
        size = os.get_terminal_size(fd)
    except OSError:
        return None
    return (size.lines, size.columns) if size.lines and size.columns else None


class TerminalSession:
    """Raw mode, the stdin pump and SIGWINCH forwarding for one exec; a context manager."""

    def __init__(self, *, tty: bool, interactive: bool, stdin_fd: int = 0, stdout_fd: int = 1) -> None:
        self.tty = tty
        self.interactive = interactive
        self.stdin_fd = stdin_fd
        self.stdout_fd = stdout_fd
        self._saved: list[Any] | None = None
        self._old_winch: _Handler = None
        self._stream: ExecControl | None = None
        self._stop_r, self._stop_w = -1, -1
        self._pump: threading.Thread | None = None
        if tty and interactive and not os.isatty(stdin_fd):
            raise TerminalError("-t with -i needs a terminal on stdin (it is a pipe or a file)",
                                hint="drop -t to stream stdin as a pipe")

    @property
    def winsize(self) -> tuple[int, int] | None:
        if not self.tty:
            return None
        return terminal_size(self.stdin_fd) or terminal_size(self.stdout_fd)

    def __enter__(self) -> TerminalSession:
        return self

    def attach(self, stream: ExecControl) -> None:
        """The exec is running: raw mode (``-it`` on a terminal; not before, so Ctrl-C still
        interrupts a boot), window changes forwarded and, with ``-i``, our stdin."""
        if self.tty and self.interactive:
            try:
                self._saved = termios.tcgetattr(self.stdin_fd)
                tty.setraw(self.stdin_fd, termios.TCSANOW)
            except termios.error as e:
                self._saved = None
                raise TerminalError(f"cannot put the terminal in raw mode: {e}") from None
        self._stream = stream
        if self.tty and threading.current_thread() is threading.main_thread():
            self._old_winch = signal.signal(signal.SIGWINCH, self._on_winch)
        self._on_winch(signal.SIGWINCH, None)  # a change between start and now is not lost
        if self.interactive:
            self._stop_r, self._stop_w = os.pipe()
            self._pump = threading.Thread(target=self._pump_stdin, args=(stream,), daemon=True,
                                          name="vz-stdin")
            self._pump.start()

    def _on_winch(self, signum: int, frame: FrameType | None) -> None:
        size = self.winsize
        if self._stream is not None and size is not None:
            with contextlib.suppress(AgentError):
                self._stream.resize(*size)  # queued (SimpleQueue.put is safe in a handler)

    def _pump_stdin(self, stream: ExecControl) -> None:
        with contextlib.suppress(AgentError, OSError):
            while True:
                ready, _, _ = select.select([self.stdin_fd, self._stop_r], [], [])
                if self._stop_r in ready:
                    return
                data = os.read(self.stdin_fd, _READ)
                if not data:
                    if not self.tty:  # a pipe's EOF is the command's; a terminal's ^D is a byte
                        stream.close_stdin()
                    return
                stream.write_stdin(data)

    def __exit__(self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None) -> None:
        self.restore()

    def restore(self) -> None:
        """Stop forwarding and put the terminal back as it was (idempotent)."""
        if self._stop_w >= 0:
            os.write(self._stop_w, b"x")
            if self._pump is not None:
                self._pump.join(timeout=5)
            os.close(self._stop_w)
            os.close(self._stop_r)
            self._stop_r = self._stop_w = -1
        if self._old_winch is not None:
            signal.signal(signal.SIGWINCH, self._old_winch)
            self._old_winch = None
        if self._saved is not None:
            with contextlib.suppress(termios.error):
                termios.tcsetattr(self.stdin_fd, termios.TCSADRAIN, self._saved)
            self._saved = None
        self._stream = None
