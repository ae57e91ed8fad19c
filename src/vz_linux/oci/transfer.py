"""Tar streams into and out of a container's VM through the agent's EXEC (supervisor side of ``cp``).

``vz-agent --in-root ROOT --extract DEST`` (guest/agent/files.c) reads the tar on its stdin and
acknowledges what it consumed with ``ack N`` lines on stdout. The agent queues stdin without flow
control of its own (8 MiB per exec, docs/PROTOCOL.md), so :func:`push_tar` keeps at most
:data:`WINDOW` bytes unacknowledged. ``--create PATH`` writes the tar on stdout, which the agent's
output flow control already bounds; :func:`pull_tar` relays it untouched — the CLI checks it
(:mod:`.copy`). Everything the guest says is bounded and sanitised before it reaches a message.
"""

from __future__ import annotations

import functools
import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from ..errors import AgentError, AgentProtocolError, CopyError
from ..vm.agent_protocol import Stream
from ..vm.linux_vm import LinuxVm
from . import guest

WINDOW = 4 << 20  # unacknowledged bytes in flight (below the agent's 8 MiB stdin queue)
STALL_TIMEOUT = 120.0  # seconds without an acknowledgement while the window is full: the guest stopped reading
_TAIL = 2048
_ACK = re.compile(rb"ack (\d{1,20})")
_ACK_LINE_MAX = 64
_PRINTABLE = re.compile(r"[^\x20-\x7e\n]")


def guest_text(data: bytes, limit: int = 600) -> str:
    """Guest output made safe to print: ASCII printables, at most ``limit`` characters (the end)."""
    text = _PRINTABLE.sub("?", data.decode("ascii", errors="replace")).strip()
    return text[-limit:]


@dataclass
class _Acks:
    cond: threading.Condition = field(default_factory=threading.Condition)
    sent: int = 0
    acked: int = 0
    done: bool = False
    error: AgentError | None = None
    stderr: bytes = b""
    pending: bytes = b""

    def room(self, size: int) -> bool:
        """``size`` more bytes may be sent (or the extractor is gone)."""
        return self.done or self.sent - self.acked + size <= WINDOW

    def line(self, raw: bytes) -> None:
        m = _ACK.fullmatch(raw)
        value = int(m.group(1)) if m else -1
        with self.cond:
            if value < self.acked or value > self.sent:
                raise AgentProtocolError(f"the guest's extractor sent a bad acknowledgement {raw[:40]!r}")
            self.acked = value
            self.cond.notify_all()

    def feed(self, data: bytes) -> None:
        self.pending += data
        *lines, self.pending = self.pending.split(b"\n")
        if len(self.pending) > _ACK_LINE_MAX:
            raise AgentProtocolError("the guest's extractor sent an overlong line")
        for raw in lines:
            self.line(raw)


def _read_acks(stream_iter: Iterable[tuple[Stream, bytes]], acks: _Acks) -> None:
    try:
        for stream, data in stream_iter:
            if stream is Stream.STDERR:
                acks.stderr = (acks.stderr + data)[-_TAIL:]
            else:
                acks.feed(data)
    except AgentError as e:
        acks.error = e
    finally:
        with acks.cond:
            acks.done = True
            acks.cond.notify_all()


def push_tar(vm: LinuxVm, dest: str, chunks: Iterable[bytes]) -> None:
    """Extract the tar made of ``chunks`` at ``dest`` in the container. Every chunk is consumed,
    even after a failure (the sender is not interrupted mid-stream); then the failure is raised."""
    acks = _Acks()
    with vm.agent.exec_stream(guest.in_root("--extract", dest), close_stdin=False) as stream:
        reader = threading.Thread(target=_read_acks, args=(((c.stream, c.data) for c in stream), acks),
                                  name="vz-cp-acks", daemon=True)
        reader.start()
        for data in chunks:
            size = len(data)
            with acks.cond:
                if not acks.cond.wait_for(functools.partial(acks.room, size), STALL_TIMEOUT):
                    raise CopyError(f"copying into {dest}: the guest acknowledged nothing for "
                                    f"{STALL_TIMEOUT:.0f}s and was stopped")
                if acks.done:
                    continue  # the extractor ended: drain the sender, report below
                acks.sent += size
            stream.write_stdin(data)
        if not acks.done:
            stream.close_stdin()
        reader.join()
        result = stream.result
    if acks.error is not None:
        raise acks.error
    if result is None or result.exit_code != 0:
        raise CopyError(f"copying into {dest} failed in the guest: {guest_text(acks.stderr) or result}")


def pull_tar(vm: LinuxVm, path: str, sink: Callable[[bytes], None]) -> list[str]:
    """Stream the tar of ``path`` in the container to ``sink``; return the guest's warnings (entries
    it skipped)."""
    stderr = b""
    with vm.exec_stream(guest.in_root("--create", path)) as stream:
        for chunk in stream:
            if chunk.stream is Stream.STDERR:
                stderr = (stderr + chunk.data)[-_TAIL:]
            else:
                sink(chunk.data)
        result = stream.result
    if result is None or result.exit_code != 0:
        raise CopyError(f"copying {path} out of the container failed: {guest_text(stderr) or result}")
    return [line for line in guest_text(stderr, _TAIL).splitlines() if line][:20]
