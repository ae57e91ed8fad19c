"""Host-side client for the guest agent (docs/PROTOCOL.md).

One :class:`AgentClient` owns one connected stream socket (a Unix socket to QEMU's virtio-serial
chardev, an accepted socket, or AF_VSOCK). A reader thread decodes frames and hands each to the
request that owns its request id, so any number of threads may issue requests at once; a control
thread sends flow-control and keepalive frames, so the reader never waits for anything but the
socket. Every wait has a timeout (:class:`AgentTimeoutError`). Replies to requests nobody waits for
any more (a hello resent during boot) are dropped, which is what makes resending safe.

Everything the guest sends is treated as hostile (docs/security.md, "Hostile guests"):

* **memory**: each request's inbox is bounded in bytes. An exec's inbox asks the agent to pause
  that exec's output (``FLOW``) above :data:`FLOW_PAUSE_AT` and to resume below
  :data:`FLOW_RESUME_AT`; an agent that keeps sending past the inbox's limit fails the request
  (:class:`AgentProtocolError`). Streaming keeps nothing it handed over; collecting keeps at most
  ``max_output`` bytes (:class:`ExecOutputLimitError`).
* **liveness**: while requests are pending, a silent channel gets a keepalive hello every
  ``keepalive_interval`` seconds. No answer within ``keepalive_timeout``, an answer from another
  agent process (it was killed and restarted), or the channel closing fails them with
  :class:`AgentGoneError`.
* **values**: a frame that parses but carries values the protocol does not allow fails the request
  it belongs to (:class:`AgentProtocolError`); the request is unregistered and its guest process
  killed, so nothing stale is left.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import math
import os
import queue
import select
import socket
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from types import TracebackType
from typing import Protocol

from ..errors import (
    AgentError,
    AgentGoneError,
    AgentProtocolError,
    AgentTimeoutError,
    ExecOutputLimitError,
    InvalidConfigError,
)
from .agent_protocol import (
    ENTROPY_BYTES,
    FILE_LIMIT,
    MAX_PAYLOAD,
    MAX_TIMEOUT_MS,
    MAX_WINSIZE,
    VSOCK_PORT,
    ErrorCode,
    Field,
    Frame,
    FrameError,
    FrameReader,
    FrameValueError,
    Msg,
    PowerAction,
    Stream,
    Tag,
    encode_frame,
)

DEFAULT_TIMEOUT = 10.0
SIGNALLED_EXIT_BASE = 128  # a command killed by signal N exits 128+N, as in a shell
# After the agent's own exec timeout fires, how long we still wait for its EXIT report.
EXEC_TIMEOUT_GRACE = 10.0
_STDIN_CHUNK = 256 * 1024
STDIN_LIMIT = 8 << 20  # the agent's per-exec stdin queue (docs/PROTOCOL.md)
# Flow control and bounds (docs/PROTOCOL.md, "Flow control"; docs/security.md):
FLOW_PAUSE_AT = 1 << 20  # an exec's queued output that makes us ask the agent to pause it
FLOW_RESUME_AT = 256 << 10  # ... and the level below which we ask it to resume
# An honest agent stops within about its own 1 MiB high-water mark of the pause: 16 MiB is a breach.
EXEC_INBOX_LIMIT = 16 << 20
REPLY_INBOX_LIMIT = 2 * MAX_PAYLOAD  # any other request gets one reply frame
COLLECT_LIMIT = 64 << 20  # default max_output of exec_collect / ExecStream.wait
KEEPALIVE_INTERVAL = 2.0
KEEPALIVE_TIMEOUT = 8.0
_CONTROL_TICK = 0.25
_CONTROL_SEND_TIMEOUT = 5.0
_KEPT_ERRORS = 16
_PID_MAX = 1 << 22  # Linux's PID_MAX_LIMIT
_SIGNAL_MAX = 64


@dataclass(frozen=True)
class AgentHello:
    agent_version: str
    protocol_revision: int
    sysname: str
    release: str
    os_version: str
    machine: str
    monotonic_ns: int
    boottime_ns: int  # the guest kernel's boot-to-now (CLOCK_BOOTTIME)
    realtime_ns: int
    agent_start_boottime_ns: int  # when the agent process started, in CLOCK_BOOTTIME
    agent_start_monotonic_ns: int
    agent_pid: int
    transport: str
    host_sent_ns: int  # host time.monotonic_ns() when the answered hello was sent
    host_received_ns: int  # ... and when its reply arrived


@dataclass(frozen=True)
class ExecOutput:
    stream: Stream
    data: bytes


@dataclass(frozen=True)
class ExecResult:
    exit_code: int | None  # None when killed by a signal
    signal: int | None
    stdout: bytes
    stderr: bytes
    timed_out: bool = False
    error: str | None = None  # e.g. "exec foo: No such file or directory" (exit code 127)
    pid: int = 0

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out

    @property
    def shell_exit_code(self) -> int:
        """The code a shell would report: the exit code, or 128+N for a process killed by signal N
        (1 when neither arrived)."""
        if self.signal is not None:
            return SIGNALLED_EXIT_BASE + self.signal
        return self.exit_code if self.exit_code is not None else 1

    def describe(self) -> str:
        if self.timed_out:
            return "timed out and was killed"
        if self.signal is not None:
            return f"killed by signal {self.signal}"
        return f"exit code {self.exit_code}" + (f" ({self.error})" if self.error else "")


@dataclass(frozen=True)
class ProbeResult:
    capability: str
    passed: bool
    evidence: str  # tail of the snippet's combined stdout+stderr
    exit_code: int | None
    signal: int | None
    timed_out: bool


def _raise_for_error(frame: Frame, what: str) -> None:
    if frame.msg != Msg.ERROR:
        return
    code = frame.int(Tag.ERROR_CODE) or 0
    try:
        name = ErrorCode(code).name.lower()
    except ValueError:
        name = f"error {code}"
    raise AgentError(f"guest agent refused {what}: {frame.str(Tag.MESSAGE)} [{name}]")


def _msg_name(msg: int) -> str:
    try:
        return Msg(msg).name
    except ValueError:
        return f"type 0x{msg:02x}"


def _reraise(item: AgentError) -> AgentError:
    """A fresh exception of the same type (each waiter gets its own traceback)."""
    return type(item)(str(item), hint=item.hint)


def _timeout_ms(timeout: float) -> int:
    """A timeout in seconds as the agent's TIMEOUT_MS, refused when the agent would refuse it."""
    if not math.isfinite(timeout) or timeout <= 0 or timeout * 1000 > MAX_TIMEOUT_MS:
        raise InvalidConfigError(f"timeout {timeout} s is not between 1 ms and {MAX_TIMEOUT_MS} ms",
                                 hint="give a positive number of seconds, or no timeout")
    return max(1, int(timeout * 1000))


def _winsize(n: int) -> int:
    if not 1 <= n <= MAX_WINSIZE:
        raise InvalidConfigError(f"terminal size {n} is not between 1 and {MAX_WINSIZE}")
    return n


def _decode_output(f: Frame) -> ExecOutput:
    stream = f.checked_int(Tag.STREAM, Stream.STDOUT, Stream.STDERR)
    data = f.raw(Tag.DATA)
    if data is None:
        raise FrameValueError("DATA is missing")
    return ExecOutput(Stream(stream), data)


def _decode_status(f: Frame) -> tuple[int | None, int | None, bool]:
    """EXIT_CODE or SIGNAL (exactly one, in range) and TIMED_OUT, of an EXIT or PROBE reply."""
    code = f.optional_int(Tag.EXIT_CODE, 0, 255)
    sig = f.optional_int(Tag.SIGNAL, 1, _SIGNAL_MAX)
    if (code is None) == (sig is None):
        raise FrameValueError("needs exactly one of EXIT_CODE and SIGNAL")
    return code, sig, bool(f.optional_int(Tag.TIMED_OUT, 0, 1))


class _Inbox:
    """The frames of one request, bounded in bytes. ``put`` never blocks (the reader thread calls
    it); an exec's inbox (``flow``) tells the caller when to pause and resume the agent instead."""

    def __init__(self, limit: int, *, flow: bool) -> None:
        self.limit = limit
        self.flow = flow
        self._items: collections.deque[tuple[Frame | AgentError, int]] = collections.deque()
        self._bytes = 0
        self._paused = False
        self._closed = False
        self._cond = threading.Condition()

    @property
    def queued_bytes(self) -> int:
        return self._bytes

    def put(self, frame: Frame) -> str:
        """Queue ``frame``: "ok", "pause" (queued; ask the agent to pause) or "over" (not queued)."""
        size = frame.size
        with self._cond:
            if self._closed:
                return "ok"
            if self._bytes + size > self.limit:
                return "over"
            self._items.append((frame, size))
            self._bytes += size
            self._cond.notify()
            if self.flow and not self._paused and self._bytes > FLOW_PAUSE_AT:
                self._paused = True
                return "pause"
            return "ok"

    def get(self, timeout: float | None) -> tuple[Frame | AgentError, bool]:
        """The next item and whether the agent should now be told to resume; queue.Empty on timeout."""
        with self._cond:
            if not self._cond.wait_for(lambda: bool(self._items), timeout):
                raise queue.Empty
            item, size = self._items.popleft()
            self._bytes -= size
            resume = self._paused and self._bytes < FLOW_RESUME_AT
            if resume:
                self._paused = False
            return item, resume

    def fail(self, error: AgentError, *, close: bool = False) -> None:
        """Drop what is queued; the next ``get`` raises ``error``. ``close``: ignore later frames."""
        with self._cond:
            if self._closed:
                return
            self._items.clear()
            self._bytes = 0
            self._items.append((error, 0))
            self._closed = close
            self._cond.notify_all()


class AgentClient:
    """Talks to one guest agent over one connected stream socket."""

    def __init__(self, sock: socket.socket, *, default_timeout: float = DEFAULT_TIMEOUT,
                 description: str = "", keepalive_interval: float = KEEPALIVE_INTERVAL,
                 keepalive_timeout: float = KEEPALIVE_TIMEOUT) -> None:
        sock.setblocking(True)
        self._sock = sock
        self._timeout = default_timeout
        self._description = description or "guest agent"
        self.keepalive_interval = keepalive_interval
        self.keepalive_timeout = keepalive_timeout
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._pending: dict[int, _Inbox] = {}
        self._broken: AgentError | None = None
        # Liveness: which agent process answered hello (pid, start time), when a frame last arrived,
        # and the keepalive hello in flight (its id, when it was sent).
        self._identity: tuple[int, int] | None = None
        self._last_rx = time.monotonic()
        self._ka_rid = 0
        self._ka_sent: float | None = None
        self._outbox: queue.SimpleQueue[bytes | int | None] = queue.SimpleQueue()
        self._reader = threading.Thread(target=self._read_loop, name="vz-agent-reader", daemon=True)
        self._control = threading.Thread(target=self._control_loop, name="vz-agent-control", daemon=True)
        self._reader.start()
        self._control.start()

    # --- constructors ---------------------------------------------------------------------
    @classmethod
    def connect_unix(cls, path: str | os.PathLike[str], *, timeout: float = DEFAULT_TIMEOUT,
                     default_timeout: float = DEFAULT_TIMEOUT) -> AgentClient:
        """Connect to an agent (or QEMU chardev server) listening on a Unix socket."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.settimeout(timeout)
        try:
            sock.connect(os.fspath(path))
        except OSError as e:
            sock.close()
            raise AgentError(f"cannot connect to the guest agent at {path}: {e.strerror or e}") from e
        return cls(sock, default_timeout=default_timeout, description=f"agent at unix:{path}")

    @classmethod
    def accept(cls, listener: socket.socket, *, timeout: float = DEFAULT_TIMEOUT,
               default_timeout: float = DEFAULT_TIMEOUT) -> AgentClient:
        """Accept one connection on our listening socket (QEMU's ``-chardev socket`` connects to it)."""
        ready, _, _ = select.select([listener], [], [], timeout)
        if not ready:
            raise AgentTimeoutError(f"nothing connected to the agent socket within {timeout:.1f}s")
        conn, _ = listener.accept()
        return cls.from_socket(conn, default_timeout=default_timeout)

    @classmethod
    def from_socket(cls, sock: socket.socket, *, default_timeout: float = DEFAULT_TIMEOUT,
                    keepalive_interval: float = KEEPALIVE_INTERVAL,
                    keepalive_timeout: float = KEEPALIVE_TIMEOUT) -> AgentClient:
        """Wrap an already connected/accepted stream socket (the client owns it from now on)."""
        return cls(sock, default_timeout=default_timeout, description="agent",
                   keepalive_interval=keepalive_interval, keepalive_timeout=keepalive_timeout)

    @classmethod
    def connect_vsock(cls, cid: int, port: int = VSOCK_PORT, *, timeout: float = DEFAULT_TIMEOUT,
                      default_timeout: float = DEFAULT_TIMEOUT) -> AgentClient:
        try:
            sock = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        except (AttributeError, OSError) as e:
            raise AgentError(f"AF_VSOCK is not available on this host: {e}") from e
        sock.settimeout(timeout)
        try:
            sock.connect((cid, port))
        except OSError as e:
            sock.close()
            raise AgentError(f"cannot connect to the guest agent at vsock {cid}:{port}: {e.strerror or e}") from e
        return cls(sock, default_timeout=default_timeout, description=f"agent at vsock:{cid}:{port}")

    # --- lifecycle ------------------------------------------------------------------------
    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        self._outbox.put(None)  # ends the control thread
        for thread in (self._reader, self._control):
            if threading.current_thread() is not thread:
                thread.join(timeout=5)

    def __enter__(self) -> AgentClient:
        return self

    def __exit__(self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    @property
    def broken(self) -> bool:
        return self._broken is not None

    @property
    def pending_requests(self) -> int:
        """Requests (running execs included) that still wait for frames from the agent."""
        with self._lock:
            return len(self._pending)

    # --- plumbing: the reader thread --------------------------------------------------------
    def _read_loop(self) -> None:
        reader = FrameReader()
        error: AgentError
        try:
            while True:
                data = self._sock.recv(262144)
                if not data:
                    error = AgentGoneError(f"{self._description} closed the connection")
                    break
                for frame in reader.feed(data):
                    self._last_rx = time.monotonic()
                    self._deliver(frame)
        except FrameError as e:
            error = AgentProtocolError(f"{self._description} sent invalid framing: {e}")
        except OSError as e:
            error = AgentGoneError(f"connection to the {self._description} failed: {e.strerror or e}")
        self._fail_all(error, broken=True)

    def _deliver(self, frame: Frame) -> None:
        rid = frame.request_id
        with self._lock:
            keepalive = rid == self._ka_rid and self._ka_sent is not None
            if keepalive:
                self._ka_rid, self._ka_sent = 0, None
            inbox = None if keepalive else self._pending.get(rid)
        if keepalive:
            if frame.msg == Msg.OK:
                self._note_identity(_identity(frame))
            return
        if inbox is None:
            return  # a reply nobody waits for any more (a resent hello, a cancelled exec)
        verdict = inbox.put(frame)
        if verdict == "pause":
            self._outbox.put(encode_frame(Msg.FLOW, rid, [(Tag.PAUSE, 1)]))
        elif verdict == "over":
            self._unregister(rid)
            inbox.fail(AgentProtocolError(
                f"{self._description} sent more than {inbox.limit >> 20} MiB for request {rid} that "
                "was not read yet (it ignored flow control)"), close=True)
            if isinstance(inbox, _ForwardInbox):
                self._outbox.put(encode_frame(Msg.FORWARD_CLOSE, rid))
            elif inbox.flow:
                self._cancel(rid)

    def _fail_all(self, error: AgentError, *, broken: bool) -> None:
        with self._lock:
            if broken and self._broken is None:
                self._broken = error
            inboxes = list(self._pending.values())
            self._pending.clear()
        for inbox in inboxes:
            inbox.fail(error, close=True)

    def _note_identity(self, identity: tuple[int, int]) -> None:
        """Remember which agent process answers; another one means the first was killed."""
        with self._lock:
            old, self._identity = self._identity, identity
        if old is not None and old != identity:
            self._fail_all(AgentGoneError(
                f"the {self._description} was restarted (pid {old[0]} gone, pid {identity[0]} "
                "answered): the requests it was serving are lost"), broken=False)

    # --- plumbing: the control thread ---------------------------------------------------------
    def _control_loop(self) -> None:
        while True:
            try:
                item = self._outbox.get(timeout=_CONTROL_TICK)
            except queue.Empty:
                item = b""
            if item is None:
                return
            if isinstance(item, int):  # an ExecStream was dropped unclosed: its exec id
                self._unregister(item)
                self._cancel(item)
            elif item:
                with contextlib.suppress(AgentError):  # the reader reports a broken channel
                    self._send(item, _CONTROL_SEND_TIMEOUT)
            self._check_alive()

    def _check_alive(self) -> None:
        """Keepalive: a hello on a silent channel while requests wait; no answer means gone."""
        now = time.monotonic()
        with self._lock:
            if self._identity is None or self._broken is not None or not self._pending:
                self._ka_rid, self._ka_sent = 0, None
                return
            if self._ka_sent is None:
                if now - self._last_rx < self.keepalive_interval:
                    return
                self._ka_rid, self._ka_sent = self._new_id_locked(), now
                hello = encode_frame(Msg.HELLO, self._ka_rid)
            elif self._last_rx < self._ka_sent and now - self._ka_sent > self.keepalive_timeout:
                hello = b""
            else:
                return
        if hello:
            with contextlib.suppress(AgentError):
                self._send(hello, _CONTROL_SEND_TIMEOUT)
            return
        self._fail_all(AgentGoneError(
            f"the {self._description} stopped answering (no reply to a keepalive hello within "
            f"{self.keepalive_timeout:.0f}s): the requests it was serving are lost"), broken=True)

    def _cancel(self, exec_id: int) -> None:
        """Kill an exec's process group in the guest without waiting (the reply is dropped)."""
        with self._lock:
            rid = self._new_id_locked()
        self._outbox.put(encode_frame(Msg.SIGNAL, rid, [(Tag.EXEC_ID, exec_id), (Tag.SIGNAL, 9)]))

    # --- plumbing: requests ---------------------------------------------------------------------
    def _new_id_locked(self) -> int:
        while True:
            rid = next(self._ids) & 0xFFFF_FFFF
            if rid and rid not in self._pending and rid != self._ka_rid:
                return rid

    def _register(self, *, flow: bool = False) -> tuple[int, _Inbox]:
        inbox = _Inbox(EXEC_INBOX_LIMIT if flow else REPLY_INBOX_LIMIT, flow=flow)
        with self._lock:
            if self._broken is not None:
                raise _reraise(self._broken)
            rid = self._new_id_locked()
            self._pending[rid] = inbox
        return rid, inbox

    def _unregister(self, rid: int) -> None:
        with self._lock:
            self._pending.pop(rid, None)

    def _send(self, data: bytes, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        view = memoryview(data)
        with self._send_lock:
            while view:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AgentTimeoutError(f"sending to the {self._description} timed out after {timeout:.1f}s")
                try:
                    n = self._sock.send(view, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    select.select([], [self._sock], [], remaining)
                    continue
                except OSError as e:
                    raise AgentGoneError(f"connection to the {self._description} failed: {e.strerror or e}") from e
                view = view[n:]

    def _wait(self, inbox: _Inbox, timeout: float | None, what: str) -> Frame:
        try:
            item, _resume = inbox.get(timeout)
        except queue.Empty:
            raise AgentTimeoutError(f"no reply from the {self._description} to {what} within {timeout:.1f}s") from None
        if isinstance(item, AgentError):
            raise _reraise(item)
        return item

    def _request(self, msg: Msg, fields: Sequence[Field], what: str, timeout: float | None) -> Frame:
        t = self._timeout if timeout is None else timeout
        rid, inbox = self._register()
        try:
            self._send(encode_frame(msg, rid, fields), t)
            frame = self._wait(inbox, t, what)
        finally:
            self._unregister(rid)
        _raise_for_error(frame, what)
        if frame.msg != Msg.OK:
            raise AgentProtocolError(f"the {self._description} answered {what} with a {_msg_name(frame.msg)} frame")
        return frame

    # --- operations -----------------------------------------------------------------------
    def hello(self, *, timeout: float | None = None) -> AgentHello:
        sent = time.monotonic_ns()
        f = self._request(Msg.HELLO, (), "hello", timeout)
        got = time.monotonic_ns()
        hello = AgentHello(
            agent_version=f.str(Tag.VERSION),
            protocol_revision=f.int(Tag.REVISION) or 0,
            sysname=f.str(Tag.SYSNAME),
            release=f.str(Tag.RELEASE),
            os_version=f.str(Tag.OS_VERSION),
            machine=f.str(Tag.MACHINE),
            monotonic_ns=f.int(Tag.MONOTONIC_NS) or 0,
            boottime_ns=f.int(Tag.BOOTTIME_NS) or 0,
            realtime_ns=f.int(Tag.REALTIME_NS) or 0,
            agent_start_boottime_ns=f.int(Tag.START_BOOTTIME_NS) or 0,
            agent_start_monotonic_ns=f.int(Tag.START_MONOTONIC_NS) or 0,
            agent_pid=f.int(Tag.PID) or 0,
            transport=f.str(Tag.TRANSPORT),
            host_sent_ns=sent,
            host_received_ns=got,
        )
        self._note_identity(_identity(f))
        return hello

    def wait_ready(self, timeout: float, *, attempt_timeout: float = 0.5,
                   on_retry: Callable[[int, float], None] | None = None) -> AgentHello:
        """Resend hello until the agent answers (a hello sent before it opened its port is lost).

        ``on_retry(attempt, elapsed_s)`` is called before each attempt, the first included (progress
        display; an exception it raises ends the wait). Raises :class:`AgentTimeoutError` once
        ``timeout`` has passed, and :class:`AgentError` at once if the channel breaks.
        """
        start = time.monotonic()
        for n in itertools.count(1):
            elapsed = time.monotonic() - start
            if on_retry is not None:
                on_retry(n, elapsed)
            left = timeout - elapsed
            if left <= 0:
                break
            try:
                return self.hello(timeout=min(attempt_timeout, left))
            except AgentTimeoutError:
                continue
        raise AgentTimeoutError(f"the {self._description} did not answer hello within {timeout:.1f}s")

    def ping(self, data: bytes = b"", *, timeout: float | None = None) -> bytes:
        f = self._request(Msg.PING, [(Tag.DATA, data)] if data else [], "ping", timeout)
        return f.raw(Tag.DATA) or b""

    def exec_stream(self, argv: Sequence[str], *, env: Mapping[str, str] | None = None,
                    cwd: str | None = None, stdin: bytes | None = None, close_stdin: bool = True,
                    timeout: float | None = None, start_timeout: float | None = None,
                    wait_started: bool = True, tty: bool = False,
                    winsize: tuple[int, int] | None = None) -> ExecStream:
        """Start a command; iterate the returned stream for output, then ``.result``.

        ``tty`` runs it on a new pseudo-terminal in the guest (``winsize`` = its rows and columns):
        stdin and output go through the terminal, output arrives as one stream (STDOUT), and
        :meth:`ExecStream.resize` changes its size.

        ``env`` adds to/overrides the agent's environment. ``timeout`` (seconds) is enforced by the
        agent, which SIGKILLs the command's whole process group. ``close_stdin=False`` keeps stdin
        open for :meth:`ExecStream.write_stdin`. ``wait_started=False`` returns at once (the agent's
        STARTED/ERROR reply is then handled while iterating), saving a round trip. Close the stream
        (or use it as a context manager) to kill the command if it still runs.
        """
        if not argv:
            raise AgentError("exec needs a non-empty argv")
        fields: list[Field] = [(Tag.ARGV, a) for a in argv]
        fields += [(Tag.ENV, f"{k}={v}") for k, v in (env or {}).items()]
        if cwd is not None:
            fields.append((Tag.CWD, cwd))
        if timeout is not None:
            fields.append((Tag.TIMEOUT_MS, _timeout_ms(timeout)))
        if tty:
            fields.append((Tag.TTY, True))
            if winsize is not None:
                fields += [(Tag.ROWS, _winsize(winsize[0])), (Tag.COLS, _winsize(winsize[1]))]
        data = stdin or b""
        if len(data) > STDIN_LIMIT:
            # The agent queues stdin without flow control; beyond its limit data would be dropped.
            raise AgentError(f"exec {argv[0]}: {len(data)} bytes of stdin is over the agent's "
                             f"{STDIN_LIMIT >> 20} MiB stdin limit")
        first, rest = data[:_STDIN_CHUNK], data[_STDIN_CHUNK:]
        if first:
            fields.append((Tag.DATA, first))
        if close_stdin and not rest:
            fields.append((Tag.EOF, True))
        stream = self._start_exec(fields, argv[0], timeout, start_timeout, wait_started)
        if rest:
            stream.write_stdin(rest)
            if close_stdin:
                stream.close_stdin()
        return stream

    def _start_exec(self, fields: list[Field], name: str, timeout: float | None,
                    start_timeout: float | None, wait_started: bool) -> ExecStream:
        t = self._timeout if start_timeout is None else start_timeout
        rid, inbox = self._register(flow=True)
        stream = ExecStream(self, rid, inbox, timeout, name)
        try:
            self._send(encode_frame(Msg.EXEC, rid, fields), t)
            if wait_started:
                stream._await_started(t)
        except BaseException:
            stream.close()
            raise
        return stream

    def exec_collect(self, argv: Sequence[str], *, env: Mapping[str, str] | None = None,
                     cwd: str | None = None, stdin: bytes | None = None,
                     timeout: float | None = None, max_output: int | None = COLLECT_LIMIT) -> ExecResult:
        """Run a command to completion and collect its output (at most ``max_output`` bytes of
        stdout + stderr; beyond that the command is killed: :class:`ExecOutputLimitError`)."""
        with self.exec_stream(argv, env=env, cwd=cwd, stdin=stdin, timeout=timeout,
                              wait_started=False) as stream:
            return stream.wait(max_output=max_output)

    def signal(self, exec_id: int, sig: int, *, timeout: float | None = None) -> None:
        """Send ``sig`` to the process group of a running exec (``ExecStream.exec_id``)."""
        self._request(Msg.SIGNAL, [(Tag.EXEC_ID, exec_id), (Tag.SIGNAL, int(sig))], "signal", timeout)

    def read_file(self, path: str, *, max_size: int = FILE_LIMIT, timeout: float | None = None) -> bytes:
        what = f"read_file {path}"
        f = self._request(Msg.READ_FILE, [(Tag.PATH, path), (Tag.MAX_SIZE, max_size)], what, timeout)
        data = f.raw(Tag.DATA) or b""
        try:
            size = f.checked_int(Tag.SIZE, 0, min(max_size, FILE_LIMIT))
        except FrameValueError as e:
            raise AgentProtocolError(f"the {self._description} answered {what} with a bad SIZE: {e}") from None
        if size != len(data):
            raise AgentProtocolError(f"the {self._description} answered {what} with SIZE {size} "
                                     f"but {len(data)} bytes of DATA")
        return data

    def write_file(self, path: str, data: bytes, *, mode: int = 0o644, timeout: float | None = None) -> None:
        """Write a small file atomically (temp file + rename in the guest)."""
        if len(data) > FILE_LIMIT:
            raise AgentError(f"write_file {path}: {len(data)} bytes is over the {FILE_LIMIT}-byte limit")
        self._request(Msg.WRITE_FILE, [(Tag.PATH, path), (Tag.DATA, data), (Tag.MODE, mode)],
                      f"write_file {path}", timeout)

    def probe(self, capability: str, snippet: str, *, timeout: float = 20.0) -> ProbeResult:
        """Run a capability's probe snippet with ``/bin/sh -c`` in the guest."""
        what = f"probe {capability}"
        f = self._request(Msg.PROBE, [(Tag.NAME, capability), (Tag.SNIPPET, snippet),
                                      (Tag.TIMEOUT_MS, _timeout_ms(timeout))],
                          what, timeout + EXEC_TIMEOUT_GRACE)
        try:
            code, sig, timed_out = _decode_status(f)
            passed = bool(f.checked_int(Tag.PASS, 0, 1))
        except FrameValueError as e:
            raise AgentProtocolError(f"the {self._description} answered {what} with bad values: {e}") from None
        return ProbeResult(capability=capability, passed=passed, evidence=f.str(Tag.EVIDENCE),
                           exit_code=code, signal=sig, timed_out=timed_out)

    def poweroff(self, action: PowerAction = PowerAction.REBOOT, *, timeout: float | None = None) -> None:
        """Ask the guest to sync and reboot (default: with ``reboot=t`` and ``-no-reboot`` QEMU exits),
        power off or halt. A connection that drops right after the request counts as success."""
        try:
            self._request(Msg.POWEROFF, [(Tag.ACTION, int(action))], "poweroff", timeout)
        except AgentTimeoutError:
            raise
        except AgentError:
            if not self.broken:
                raise

    def forward_open(self, port: int, *, netns: str | None = None,
                     timeout: float | None = None) -> ForwardChannel:
        """Connect to 127.0.0.1:``port`` in the guest — inside the network namespace file ``netns``
        (``/proc/PID/ns/net``) when given. Nothing listening there: :class:`AgentError` (not_found)."""
        if not 1 <= port <= 65535:
            raise InvalidConfigError(f"port {port} is not between 1 and 65535")
        what = f"forward to guest port {port}"
        inbox = _ForwardInbox()
        with self._lock:
            if self._broken is not None:
                raise _reraise(self._broken)
            rid = self._new_id_locked()
            self._pending[rid] = inbox
        channel = ForwardChannel(self, rid, inbox, what)
        fields: list[Field] = [(Tag.PORT, port)] + ([(Tag.PATH, netns)] if netns else [])
        t = self._timeout if timeout is None else timeout
        try:
            self._send(encode_frame(Msg.FORWARD_OPEN, rid, fields), t)
            reply = self._wait(inbox, t, what)
            _raise_for_error(reply, what)
            if reply.msg != Msg.OK:
                raise AgentProtocolError(f"the {self._description} answered {what} with a "
                                         f"{_msg_name(reply.msg)} frame")
        except BaseException:
            channel._forget()
            raise
        return channel

    def restored(self, *, realtime_ns: int | None = None, entropy: bytes | None = None,
                 timeout: float | None = None) -> int:
        """Tell a guest restored from a snapshot the host's time (its clock is stepped to it) and fresh
        entropy (its RNG is reseeded from it). Returns the guest's clock before the step (ns)."""
        now = time.time_ns() if realtime_ns is None else realtime_ns
        data = os.urandom(ENTROPY_BYTES) if entropy is None else entropy
        f = self._request(Msg.RESTORED, [(Tag.REALTIME_NS, now), (Tag.DATA, data)], "restored", timeout)
        return f.int(Tag.REALTIME_NS) or 0


def _identity(f: Frame) -> tuple[int, int]:
    """Which agent process sent this hello reply: its pid and when it started."""
    return f.int(Tag.PID) or 0, f.int(Tag.START_BOOTTIME_NS) or 0


class ExecControl(Protocol):
    """What a terminal front end drives on a running exec (an :class:`ExecStream`, or a container
    exec relayed by its supervisor)."""

    def write_stdin(self, data: bytes, *, timeout: float | None = None) -> None: ...
    def close_stdin(self, *, timeout: float | None = None) -> None: ...
    def resize(self, rows: int, cols: int) -> None: ...


class ExecStream:
    """A running exec: iterate for :class:`ExecOutput` chunks; ``result`` once it finished.

    Chunks handed out by iteration are not kept (``result.stdout``/``stderr`` hold only what
    :meth:`wait` collected). :meth:`close` — or leaving its ``with`` block, or dropping the last
    reference — kills the command in the guest if it still runs.
    """

    def __init__(self, client: AgentClient, exec_id: int, inbox: _Inbox, timeout: float | None,
                 name: str) -> None:
        self._client = client
        self.exec_id = exec_id
        self.pid = 0
        self._name = name
        self._started = False
        self._closed = False
        self._inbox = inbox
        self._deadline = None if timeout is None else time.monotonic() + timeout + EXEC_TIMEOUT_GRACE
        self.result: ExecResult | None = None
        self.errors: list[str] = []  # the last few non-fatal agent errors (e.g. stdin over limit)
        # An abandoned stream must not leave its command running and filling a paused pipe.
        self._finalizer = weakref.finalize(self, client._outbox.put, exec_id)

    def __enter__(self) -> ExecStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def queued_bytes(self) -> int:
        """Output received from the agent but not handed out yet (bounded: docs/PROTOCOL.md)."""
        return self._inbox.queued_bytes

    def close(self) -> None:
        """Stop following this exec: kill it in the guest if it still runs, drop queued output."""
        if not self._closed and self.result is None:
            self._client._cancel(self.exec_id)
        self._forget()

    def _forget(self) -> None:
        """No more frames for this exec: unregister it, wake and fail any reader of the inbox."""
        if self._closed:
            return
        self._closed = True
        self._finalizer.detach()
        self._client._unregister(self.exec_id)
        self._inbox.fail(AgentError(f"exec {self._name} was closed"), close=True)

    def __iter__(self) -> Iterator[ExecOutput]:
        while self.result is None:
            out = self._step()
            if out is not None:
                yield out

    def _get(self) -> Frame:
        remaining = None if self._deadline is None else max(0.0, self._deadline - time.monotonic())
        try:
            item, resume = self._inbox.get(remaining)
        except queue.Empty:
            self.close()
            raise AgentTimeoutError(f"exec {self.exec_id} did not finish in time") from None
        if isinstance(item, AgentError):
            self._forget()
            raise _reraise(item)
        if resume:
            self._client._outbox.put(encode_frame(Msg.FLOW, self.exec_id, [(Tag.PAUSE, 0)]))
        return item

    def _await_started(self, timeout: float) -> None:
        try:
            item, _ = self._inbox.get(timeout)
        except queue.Empty:
            raise AgentTimeoutError(f"no reply from the {self._client._description} to exec "
                                    f"{self._name} within {timeout:.1f}s") from None
        if isinstance(item, AgentError):
            raise _reraise(item)
        self._handle(item)

    def _step(self) -> ExecOutput | None:
        return self._handle(self._get())

    def _handle(self, item: Frame) -> ExecOutput | None:
        """One frame of this exec: an output chunk, or None (STARTED, EXIT, a non-fatal ERROR)."""
        try:
            if item.msg == Msg.OUTPUT and self._started:
                return _decode_output(item)
            if item.msg == Msg.EXIT and self._started:
                self._finish(item)
            elif item.msg == Msg.STARTED and not self._started:
                self.pid = item.optional_int(Tag.PID, 1, _PID_MAX) or 0
                self._started = True
            elif item.msg == Msg.ERROR and not self._started:  # the exec itself was refused
                self._forget()
                _raise_for_error(item, f"exec {self._name}")
            elif item.msg == Msg.ERROR:
                self.errors = [*self.errors[-(_KEPT_ERRORS - 1):], item.str(Tag.MESSAGE)]
            else:
                raise FrameValueError(f"unexpected {_msg_name(item.msg)} frame")
        except FrameValueError as e:
            self.close()
            raise AgentProtocolError(f"the {self._client._description} sent a bad frame for exec "
                                     f"{self._name}: {e}") from None
        return None

    def _finish(self, item: Frame) -> None:
        code, sig, timed_out = _decode_status(item)
        pid = item.optional_int(Tag.PID, 1, _PID_MAX)
        msg = item.raw(Tag.MESSAGE)
        self._forget()
        self.result = ExecResult(
            exit_code=code, signal=sig, stdout=b"", stderr=b"", timed_out=timed_out,
            error=None if msg is None else msg.decode(errors="replace"), pid=pid or self.pid)

    def wait(self, *, max_output: int | None = COLLECT_LIMIT) -> ExecResult:
        """Run to the end, collecting the output not handed out yet (at most ``max_output`` bytes:
        beyond that the command is killed and :class:`ExecOutputLimitError` raised)."""
        if self.result is not None:
            return self.result
        out, err = bytearray(), bytearray()
        for chunk in self:
            (err if chunk.stream is Stream.STDERR else out).extend(chunk.data)
            if max_output is not None and len(out) + len(err) > max_output:
                self.close()
                raise ExecOutputLimitError(f"exec {self._name} printed more than {max_output} bytes "
                                           "and was killed")
        assert self.result is not None
        self.result = replace(self.result, stdout=bytes(out), stderr=bytes(err))
        return self.result

    def write_stdin(self, data: bytes, *, timeout: float | None = None) -> None:
        t = self._client._timeout if timeout is None else timeout
        for i in range(0, len(data), MAX_PAYLOAD // 2):
            self._client._send(encode_frame(Msg.STDIN, self.exec_id, [(Tag.DATA, data[i : i + MAX_PAYLOAD // 2])]), t)

    def close_stdin(self, *, timeout: float | None = None) -> None:
        t = self._client._timeout if timeout is None else timeout
        self._client._send(encode_frame(Msg.STDIN, self.exec_id, [(Tag.EOF, True)]), t)

    def signal(self, sig: int) -> None:
        self._client.signal(self.exec_id, sig)

    def resize(self, rows: int, cols: int) -> None:
        """Set a TTY exec's terminal size (the guest's foreground process group gets SIGWINCH).
        Queued, never blocks: safe to call from any thread."""
        fields: list[Field] = [(Tag.ROWS, _winsize(rows)), (Tag.COLS, _winsize(cols))]
        self._client._outbox.put(encode_frame(Msg.RESIZE, self.exec_id, fields))


# --- port forwarding (docs/PROTOCOL.md, "Ports") --------------------------------------------------
FORWARD_WINDOW = 256 << 10  # host bytes in flight to one guest socket (the agent's limit is 1 MiB)
_FORWARD_CHUNK = 64 << 10


class _ForwardInbox(_Inbox):
    """A forward's inbox: FORWARD_ACK frames are credit, taken by the reader thread at once (so a
    sender never waits on the consumer of received data); everything else is queued."""

    def __init__(self) -> None:
        super().__init__(EXEC_INBOX_LIMIT, flow=True)
        self.in_flight = 0
        self.credit = threading.Condition()
        self.ack_error: str | None = None

    def put(self, frame: Frame) -> str:
        if frame.msg != Msg.FORWARD_ACK:
            return super().put(frame)
        with self.credit:
            try:
                self.in_flight -= Frame.checked_int(frame, Tag.SIZE, 1, self.in_flight)
            except FrameValueError as e:
                self.ack_error = f"bad FORWARD_ACK: {e}"
            self.credit.notify_all()
        if self.ack_error is not None:
            self.fail(AgentProtocolError(self.ack_error), close=True)
        return "ok"


@dataclass(frozen=True)
class ForwardEvent:
    """What arrived for a forwarded connection: ``data`` bytes, or ``eof`` (the guest side shut
    down writing), or ``closed`` (the connection is gone; ``message`` says why when it failed)."""

    data: bytes = b""
    eof: bool = False
    closed: bool = False
    message: str | None = None


class ForwardChannel:
    """One TCP connection to a port in the guest, relayed through the agent.

    :meth:`send` blocks while :data:`FORWARD_WINDOW` bytes are unacknowledged (the guest socket is
    not reading); :meth:`recv` returns the next :class:`ForwardEvent`. Received data is bounded by
    the same flow control as exec output. :meth:`close` aborts the connection in the guest.
    """

    def __init__(self, client: AgentClient, rid: int, inbox: _ForwardInbox, what: str) -> None:
        self._client = client
        self.rid = rid
        self._inbox = inbox
        self._what = what
        self._closed = False

    def send(self, data: bytes, *, timeout: float | None = None) -> None:
        view = memoryview(data)
        while view:
            n = min(len(view), _FORWARD_CHUNK)
            self._take_credit(n, timeout)
            self._client._send(encode_frame(Msg.FORWARD_DATA, self.rid, [(Tag.DATA, bytes(view[:n]))]),
                               self._client._timeout if timeout is None else timeout)
            view = view[n:]

    def _take_credit(self, n: int, timeout: float | None) -> None:
        ib = self._inbox
        with ib.credit:
            ok = ib.credit.wait_for(lambda: ib.in_flight + n <= FORWARD_WINDOW or ib.ack_error is not None
                                    or self._closed or self._client.broken, timeout)
            if not ok:
                raise AgentTimeoutError(f"{self._what}: the guest side did not read for {timeout:.0f}s")
            if ib.ack_error is not None or self._client.broken or self._closed:
                raise AgentError(f"{self._what}: the connection is closed")
            ib.in_flight += n

    def shutdown_write(self, *, timeout: float | None = None) -> None:
        """Half-close: the guest socket sees EOF once everything sent so far was written."""
        self._client._send(encode_frame(Msg.FORWARD_DATA, self.rid, [(Tag.EOF, True)]),
                           self._client._timeout if timeout is None else timeout)

    def recv(self, timeout: float | None = None) -> ForwardEvent:
        try:
            item, resume = self._inbox.get(timeout)
        except queue.Empty:
            raise AgentTimeoutError(f"{self._what}: nothing arrived within {timeout:.0f}s") from None
        if isinstance(item, AgentError):
            self.close()  # a FORWARD_CLOSE for an id the agent already freed is ignored
            raise _reraise(item)
        if resume:
            self._client._outbox.put(encode_frame(Msg.FLOW, self.rid, [(Tag.PAUSE, 0)]))
        if item.msg == Msg.FORWARD_RECV and item.raw(Tag.DATA) is not None:
            return ForwardEvent(data=item.raw(Tag.DATA) or b"")
        if item.msg == Msg.FORWARD_CLOSED:
            if item.raw(Tag.EOF) is not None:
                return ForwardEvent(eof=True)
            self._forget()
            msg = item.raw(Tag.MESSAGE)
            return ForwardEvent(closed=True, message=None if msg is None else msg[:400].decode(errors="replace"))
        self.close()
        raise AgentProtocolError(f"{self._what}: unexpected {_msg_name(item.msg)} frame")

    def _forget(self) -> None:
        if not self._closed:
            self._closed = True
            self._client._unregister(self.rid)
            self._inbox.fail(AgentError(f"{self._what} was closed"), close=True)
            with self._inbox.credit:
                self._inbox.credit.notify_all()

    def close(self) -> None:
        """Abort the connection in the guest (no reply) and stop following it."""
        if not self._closed:
            self._client._outbox.put(encode_frame(Msg.FORWARD_CLOSE, self.rid))
        self._forget()

    def __enter__(self) -> ForwardChannel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
