"""FakeAgent: the named fake for faults a real guest cannot be made to produce on demand.

It speaks the agent's framing over one end of a socketpair while the real host client
(:class:`vz_linux.vm.agent_client.AgentClient`) holds the other: a test scripts it frame by frame
to flood, to send values the protocol forbids, to ignore flow control, to fall silent or to answer
as a restarted agent. Everything it does a real agent would only do when compromised or killed;
the VM tests (tests/hostile/test_guest_vm.py) cover what a real guest can be made to do.
"""

from __future__ import annotations

import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TypeVar

from vz_linux.vm.agent_client import AgentClient
from vz_linux.vm.agent_protocol import Field, Frame, FrameReader, Msg, Tag, encode_frame

T = TypeVar("T")
AGENT_PID = 4242
AGENT_START_NS = 1_000_000


@dataclass
class FakeAgent:
    sock: socket.socket
    pid: int = AGENT_PID
    start_ns: int = AGENT_START_NS
    received: list[Frame] = field(default_factory=list)  # every frame the client sent, in order
    _reader: FrameReader = field(default_factory=FrameReader)
    _unread: list[Frame] = field(default_factory=list)

    # --- receiving ------------------------------------------------------------------------
    def _pump(self, timeout: float) -> bool:
        """Read what is there (waiting up to ``timeout``); False once the client has gone."""
        ready, _, _ = select.select([self.sock], [], [], timeout)
        if not ready:
            return True
        data = self.sock.recv(1 << 20)
        if not data:
            return False
        frames = list(self._reader.feed(data))
        self.received += frames
        self._unread += frames
        return True

    def recv(self, timeout: float = 10.0, *, msg: Msg | None = None) -> Frame:
        """The next frame from the client (of type ``msg``, skipping others)."""
        deadline = time.monotonic() + timeout
        while True:
            while self._unread:
                frame = self._unread.pop(0)
                if msg is None or frame.msg == msg:
                    return frame
            left = deadline - time.monotonic()
            assert left > 0, f"the client sent no {msg.name if msg else 'frame'} within {timeout}s"
            assert self._pump(min(left, 0.1)), "the client closed the connection"

    def poll(self) -> None:
        """Take in whatever the client has sent so far, without waiting."""
        self._pump(0)

    def sent_of(self, msg: Msg) -> list[Frame]:
        return [f for f in self.received if f.msg == msg]

    # --- sending --------------------------------------------------------------------------
    def send(self, msg: int, rid: int, fields: list[Field] | tuple[()] = ()) -> None:
        self.sock.sendall(encode_frame(msg, rid, fields))

    def try_send(self, data: bytes, timeout: float) -> bool:
        """Send ``data`` unless the client stops reading for ``timeout`` seconds (then False)."""
        view = memoryview(data)
        while view:
            _, writable, _ = select.select([], [self.sock], [], timeout)
            if not writable:
                return False
            view = view[self.sock.send(view):]
        return True

    def answer_hello(self, req: Frame, *, pid: int | None = None) -> None:
        self.send(Msg.OK, req.request_id, [
            (Tag.VERSION, "fake"), (Tag.REVISION, 1), (Tag.PID, pid if pid is not None else self.pid),
            (Tag.START_BOOTTIME_NS, self.start_ns), (Tag.TRANSPORT, "fake")])

    def start_exec(self, req: Frame, *, pid: int = 77) -> None:
        assert req.msg == Msg.EXEC
        self.send(Msg.STARTED, req.request_id, [(Tag.PID, pid)])

    def output(self, rid: int, data: bytes, stream: int = 1) -> None:
        self.send(Msg.OUTPUT, rid, [(Tag.STREAM, stream), (Tag.DATA, data)])

    def exit(self, rid: int, code: int = 0) -> None:
        self.send(Msg.EXIT, rid, [(Tag.EXIT_CODE, code), (Tag.TIMED_OUT, 0), (Tag.PID, 77)])


def in_thread(fn: Callable[[], T]) -> Callable[[float], T]:
    """Run ``fn`` in a thread now; the returned function joins it and returns or raises its result."""
    box: dict[str, object] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:
            box["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()

    def join(timeout: float) -> T:
        t.join(timeout)
        assert not t.is_alive(), f"still waiting after {timeout}s"
        if "error" in box:
            raise box["error"]  # type: ignore[misc]
        return box["value"]  # type: ignore[return-value]

    return join


@contextmanager
def fake_pair(*, keepalive: tuple[float, float] | None = None,
              handshake: bool = True) -> Iterator[tuple[AgentClient, FakeAgent]]:
    """A real client wired to a FakeAgent; with ``handshake`` the client has seen its hello
    (so it knows which agent process it talks to, as after LinuxVm.wait_for_agent).
    ``keepalive``: (interval, timeout) in seconds, short so that liveness tests stay fast."""
    ours, theirs = socket.socketpair()
    extra = {} if keepalive is None else {"keepalive_interval": keepalive[0], "keepalive_timeout": keepalive[1]}
    client = AgentClient.from_socket(ours, default_timeout=10, **extra)
    agent = FakeAgent(theirs)
    try:
        if handshake:
            done = in_thread(lambda: client.hello(timeout=10))
            agent.answer_hello(agent.recv(msg=Msg.HELLO))
            done(10)
        yield client, agent
    finally:
        client.close()
        theirs.close()
