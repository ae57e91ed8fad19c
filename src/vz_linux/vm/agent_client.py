"""Host-side client for the guest agent (docs/PROTOCOL.md).

One :class:`AgentClient` owns one connected stream socket (a Unix socket to QEMU's virtio-serial
chardev, an accepted socket, or AF_VSOCK). A single reader thread decodes frames and hands each to
the request that owns its request id, so any number of threads may issue requests at once.
Every wait has a timeout (:class:`AgentTimeoutError`); a broken channel raises :class:`AgentError`
in every waiter. Replies to requests nobody waits for any more (a hello resent during boot) are
dropped, which is what makes resending safe.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import queue
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType

from ..errors import AgentError, AgentTimeoutError
from .agent_protocol import (
    ENTROPY_BYTES,
    FILE_LIMIT,
    MAX_PAYLOAD,
    VSOCK_PORT,
    ErrorCode,
    Field,
    Frame,
    FrameError,
    FrameReader,
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


class AgentClient:
    """Talks to one guest agent over one connected stream socket."""

    def __init__(self, sock: socket.socket, *, default_timeout: float = DEFAULT_TIMEOUT,
                 description: str = "") -> None:
        sock.setblocking(True)
        self._sock = sock
        self._timeout = default_timeout
        self._description = description or "guest agent"
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._pending: dict[int, queue.Queue[Frame | AgentError]] = {}
        self._broken: AgentError | None = None
        self._reader = threading.Thread(target=self._read_loop, name="vz-agent-reader", daemon=True)
        self._reader.start()

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
    def from_socket(cls, sock: socket.socket, *, default_timeout: float = DEFAULT_TIMEOUT) -> AgentClient:
        """Wrap an already connected/accepted stream socket (the client owns it from now on)."""
        return cls(sock, default_timeout=default_timeout, description="agent")

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
        if threading.current_thread() is not self._reader:
            self._reader.join(timeout=5)

    def __enter__(self) -> AgentClient:
        return self

    def __exit__(self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    @property
    def broken(self) -> bool:
        return self._broken is not None

    # --- plumbing -------------------------------------------------------------------------
    def _read_loop(self) -> None:
        reader = FrameReader()
        error: AgentError
        try:
            while True:
                data = self._sock.recv(262144)
                if not data:
                    error = AgentError(f"{self._description} closed the connection")
                    break
                for frame in reader.feed(data):
                    with self._lock:
                        q = self._pending.get(frame.request_id)
                    if q is not None:
                        q.put(frame)
        except FrameError as e:
            error = AgentError(f"{self._description} sent invalid framing: {e}")
        except OSError as e:
            error = AgentError(f"connection to the {self._description} failed: {e.strerror or e}")
        with self._lock:
            self._broken = error
            waiters = list(self._pending.values())
        for q in waiters:
            q.put(error)

    def _register(self) -> tuple[int, queue.Queue[Frame | AgentError]]:
        q: queue.Queue[Frame | AgentError] = queue.Queue()
        with self._lock:
            if self._broken is not None:
                raise self._broken
            while True:
                rid = next(self._ids) & 0xFFFF_FFFF
                if rid and rid not in self._pending:
                    break
            self._pending[rid] = q
        return rid, q

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
                    raise AgentError(f"connection to the {self._description} failed: {e.strerror or e}") from e
                view = view[n:]

    def _wait(self, q: queue.Queue[Frame | AgentError], timeout: float | None, what: str) -> Frame:
        try:
            item = q.get(timeout=timeout)
        except queue.Empty:
            raise AgentTimeoutError(f"no reply from the {self._description} to {what} within {timeout:.1f}s") from None
        if isinstance(item, AgentError):
            raise AgentError(str(item))
        return item

    def _request(self, msg: Msg, fields: Sequence[Field], what: str, timeout: float | None) -> Frame:
        t = self._timeout if timeout is None else timeout
        rid, q = self._register()
        try:
            self._send(encode_frame(msg, rid, fields), t)
            frame = self._wait(q, t, what)
        finally:
            self._unregister(rid)
        _raise_for_error(frame, what)
        return frame

    # --- operations -----------------------------------------------------------------------
    def hello(self, *, timeout: float | None = None) -> AgentHello:
        sent = time.monotonic_ns()
        f = self._request(Msg.HELLO, (), "hello", timeout)
        got = time.monotonic_ns()
        return AgentHello(
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
                    wait_started: bool = True) -> ExecStream:
        """Start a command; iterate the returned stream for output, then ``.result``.

        ``env`` adds to/overrides the agent's environment. ``timeout`` (seconds) is enforced by the
        agent, which SIGKILLs the command's whole process group. ``close_stdin=False`` keeps stdin
        open for :meth:`ExecStream.write_stdin`. ``wait_started=False`` returns at once (the agent's
        STARTED/ERROR reply is then handled while iterating), saving a round trip.
        """
        if not argv:
            raise AgentError("exec needs a non-empty argv")
        fields: list[Field] = [(Tag.ARGV, a) for a in argv]
        fields += [(Tag.ENV, f"{k}={v}") for k, v in (env or {}).items()]
        if cwd is not None:
            fields.append((Tag.CWD, cwd))
        if timeout is not None:
            fields.append((Tag.TIMEOUT_MS, max(1, int(timeout * 1000))))
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
        t = self._timeout if start_timeout is None else start_timeout
        rid, q = self._register()
        try:
            self._send(encode_frame(Msg.EXEC, rid, fields), t)
            if wait_started:
                frame = self._wait(q, t, f"exec {argv[0]}")
                _raise_for_error(frame, f"exec {argv[0]}")
        except BaseException:
            self._unregister(rid)
            raise
        stream = ExecStream(self, rid, q, frame.int(Tag.PID) or 0 if wait_started else 0, timeout, argv[0])
        if rest:
            stream.write_stdin(rest)
            if close_stdin:
                stream.close_stdin()
        return stream

    def exec_collect(self, argv: Sequence[str], *, env: Mapping[str, str] | None = None,
                     cwd: str | None = None, stdin: bytes | None = None,
                     timeout: float | None = None) -> ExecResult:
        """Run a command to completion and collect its output."""
        return self.exec_stream(argv, env=env, cwd=cwd, stdin=stdin, timeout=timeout,
                                wait_started=False).wait()

    def signal(self, exec_id: int, sig: int, *, timeout: float | None = None) -> None:
        """Send ``sig`` to the process group of a running exec (``ExecStream.exec_id``)."""
        self._request(Msg.SIGNAL, [(Tag.EXEC_ID, exec_id), (Tag.SIGNAL, int(sig))], "signal", timeout)

    def read_file(self, path: str, *, max_size: int = FILE_LIMIT, timeout: float | None = None) -> bytes:
        f = self._request(Msg.READ_FILE, [(Tag.PATH, path), (Tag.MAX_SIZE, max_size)], f"read_file {path}", timeout)
        return f.raw(Tag.DATA) or b""

    def write_file(self, path: str, data: bytes, *, mode: int = 0o644, timeout: float | None = None) -> None:
        """Write a small file atomically (temp file + rename in the guest)."""
        if len(data) > FILE_LIMIT:
            raise AgentError(f"write_file {path}: {len(data)} bytes is over the {FILE_LIMIT}-byte limit")
        self._request(Msg.WRITE_FILE, [(Tag.PATH, path), (Tag.DATA, data), (Tag.MODE, mode)],
                      f"write_file {path}", timeout)

    def probe(self, capability: str, snippet: str, *, timeout: float = 20.0) -> ProbeResult:
        """Run a capability's probe snippet with ``/bin/sh -c`` in the guest."""
        f = self._request(Msg.PROBE, [(Tag.NAME, capability), (Tag.SNIPPET, snippet),
                                      (Tag.TIMEOUT_MS, max(1, int(timeout * 1000)))],
                          f"probe {capability}", timeout + EXEC_TIMEOUT_GRACE)
        return ProbeResult(
            capability=capability,
            passed=bool(f.int(Tag.PASS)),
            evidence=f.str(Tag.EVIDENCE),
            exit_code=f.int(Tag.EXIT_CODE),
            signal=f.int(Tag.SIGNAL),
            timed_out=bool(f.int(Tag.TIMED_OUT)),
        )

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

    def restored(self, *, realtime_ns: int | None = None, entropy: bytes | None = None,
                 timeout: float | None = None) -> int:
        """Tell a guest restored from a snapshot the host's time (its clock is stepped to it) and fresh
        entropy (its RNG is reseeded from it). Returns the guest's clock before the step (ns)."""
        now = time.time_ns() if realtime_ns is None else realtime_ns
        data = os.urandom(ENTROPY_BYTES) if entropy is None else entropy
        f = self._request(Msg.RESTORED, [(Tag.REALTIME_NS, now), (Tag.DATA, data)], "restored", timeout)
        return f.int(Tag.REALTIME_NS) or 0


class ExecStream:
    """A running exec: iterate for :class:`ExecOutput` chunks; ``result`` once it finished."""

    def __init__(self, client: AgentClient, exec_id: int, q: queue.Queue[Frame | AgentError], pid: int,
                 timeout: float | None, name: str) -> None:
        self._client = client
        self.exec_id = exec_id
        self.pid = pid
        self._name = name
        self._started = pid != 0
        self._q = q
        self._deadline = None if timeout is None else time.monotonic() + timeout + EXEC_TIMEOUT_GRACE
        self._stdout = bytearray()
        self._stderr = bytearray()
        self.result: ExecResult | None = None
        self.errors: list[str] = []  # non-fatal agent errors about this exec (e.g. stdin over limit)

    def __iter__(self) -> Iterator[ExecOutput]:
        while self.result is None:
            remaining = None if self._deadline is None else max(0.0, self._deadline - time.monotonic())
            try:
                item = self._q.get(timeout=remaining)
            except queue.Empty:
                self._client._unregister(self.exec_id)
                raise AgentTimeoutError(f"exec {self.exec_id} did not finish in time") from None
            if isinstance(item, AgentError):
                self._client._unregister(self.exec_id)
                raise AgentError(str(item))
            if item.msg == Msg.OUTPUT:
                out = ExecOutput(Stream(item.int(Tag.STREAM) or 1), item.raw(Tag.DATA) or b"")
                (self._stderr if out.stream is Stream.STDERR else self._stdout).extend(out.data)
                yield out
            elif item.msg == Msg.EXIT:
                self._client._unregister(self.exec_id)
                msg = item.raw(Tag.MESSAGE)
                self.result = ExecResult(
                    exit_code=item.int(Tag.EXIT_CODE),
                    signal=item.int(Tag.SIGNAL),
                    stdout=bytes(self._stdout),
                    stderr=bytes(self._stderr),
                    timed_out=bool(item.int(Tag.TIMED_OUT)),
                    error=None if msg is None else msg.decode(errors="replace"),
                    pid=self.pid,
                )
            elif item.msg == Msg.STARTED:
                self.pid = item.int(Tag.PID) or 0
                self._started = True
            elif item.msg == Msg.ERROR:
                if not self._started:  # the exec itself was refused
                    self._client._unregister(self.exec_id)
                    _raise_for_error(item, f"exec {self._name}")
                self.errors.append(item.str(Tag.MESSAGE))

    def wait(self) -> ExecResult:
        for _ in self:
            pass
        assert self.result is not None
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
