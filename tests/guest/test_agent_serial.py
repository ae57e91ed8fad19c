"""The serial-port code path (virtio-serial semantics) on the host, with a pty standing in for the port.

A pty behaves like the guest's virtio port where it matters: the fd stays open when the far end
goes away, and poll() then reports POLLHUP at once. The agent must resynchronise after garbage
(a serial stream cannot be reopened), and must neither exit nor spin when the host end is gone.
"""

from __future__ import annotations

import contextlib
import os
import select
import termios
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from vz_linux.run import spawn
from vz_linux.version import AGENT_PROTOCOL_REVISION
from vz_linux.vm.agent_protocol import ErrorCode, Frame, FrameReader, Msg, Tag, encode_frame

pytestmark = pytest.mark.timeout(120)


class Port:
    def __init__(self, master: int) -> None:
        self.fd = master
        self.reader = FrameReader()
        self.pending: list[Frame] = []

    def send(self, data: bytes) -> None:
        os.write(self.fd, data)

    def frames(self, n: int, timeout: float = 15) -> list[Frame]:
        deadline = time.monotonic() + timeout
        while len(self.pending) < n:
            left = deadline - time.monotonic()
            assert left > 0, f"got {len(self.pending)} of {n} frames"
            r, _, _ = select.select([self.fd], [], [], left)
            if r:
                self.pending.extend(self.reader.feed(os.read(self.fd, 65536)))
        out, self.pending = self.pending[:n], self.pending[n:]
        return out


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.fixture
def serial(agent_binary: Path) -> Iterator[tuple[Port, int]]:
    master, slave = os.openpty()
    path = os.ttyname(slave)
    with spawn([agent_binary, "--listen", f"serial:{path}"]) as proc:
        deadline = time.monotonic() + 10
        # The agent puts the line in raw mode once it has the port open: only then is it safe to talk.
        while termios.tcgetattr(slave)[3] & termios.ECHO:
            assert proc.poll() is None and time.monotonic() < deadline, "agent did not open the port"
            time.sleep(0.01)
        yield Port(master), proc.pid
        assert proc.poll() is None, "agent exited"
    os.close(slave)
    with contextlib.suppress(OSError):
        os.close(master)


def test_hello_over_serial(serial: tuple[Port, int]) -> None:
    port, _ = serial
    port.send(encode_frame(Msg.HELLO, 1))
    (f,) = port.frames(1)
    assert f.msg == Msg.OK and f.int(Tag.REVISION) == AGENT_PROTOCOL_REVISION
    assert f.str(Tag.TRANSPORT) == "virtio-serial"


def _until_ok(port: Port) -> tuple[list[Frame], Frame]:
    errors: list[Frame] = []
    while True:
        (f,) = port.frames(1)
        if f.msg == Msg.OK:
            return errors, f
        errors.append(f)


def test_serial_resynchronises_after_garbage(serial: tuple[Port, int]) -> None:
    port, _ = serial
    # e.g. the tail of a frame whose start was discarded before the agent opened the port
    port.send(b"\x00\x07junkV" + encode_frame(Msg.PING, 2, [(Tag.DATA, b"one")]))
    errors, ok = _until_ok(port)
    assert errors and all(e.msg == Msg.ERROR and e.int(Tag.ERROR_CODE) == ErrorCode.FRAMING for e in errors)
    assert ok.request_id == 2 and ok.raw(Tag.DATA) == b"one"
    # An oversized header is skipped too (its payload is never awaited), and the next frame is served.
    port.send(b"VZ\x02\x00\x00\x00\x00\x03\xff\xff\xff\xff" + encode_frame(Msg.PING, 4, [(Tag.DATA, b"two")]))
    errors, ok = _until_ok(port)
    assert errors[0].int(Tag.ERROR_CODE) == ErrorCode.TOO_BIG and errors[0].request_id == 3
    assert ok.request_id == 4 and ok.raw(Tag.DATA) == b"two"


def test_exec_over_serial(serial: tuple[Port, int]) -> None:
    port, _ = serial
    port.send(encode_frame(Msg.EXEC, 9, [(Tag.ARGV, "echo"), (Tag.ARGV, "via serial"), (Tag.EOF, True)]))
    frames = port.frames(3)
    assert [f.msg for f in frames] == [Msg.STARTED, Msg.OUTPUT, Msg.EXIT]
    assert frames[1].raw(Tag.DATA) == b"via serial\n"


def test_host_end_gone_no_exit_no_spin(serial: tuple[Port, int]) -> None:
    port, pid = serial
    port.send(encode_frame(Msg.HELLO, 1))
    port.frames(1)
    os.close(port.fd)  # the host end disappears: the agent's fd now reports POLLHUP forever
    before = _cpu_seconds(pid)
    time.sleep(2.0)
    used = _cpu_seconds(pid) - before
    # Busy-polling a hung-up fd burns a whole core (about 2 s here); re-checking on a timer costs ~0.
    assert used < 0.5, f"agent used {used:.2f}s of CPU in 2s with the host end gone"
    assert Path(f"/proc/{pid}").exists()
