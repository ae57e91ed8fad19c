"""The per-container supervisor: a detached process that owns the container's VM.

``vz oci create`` binds and listens on the container's Unix socket itself, then starts this
process with the listening fd (readiness is a fact, not a sleep) in its own session, so it outlives
the CLI. The VM is booted from the supervisor's main thread: QEMU's and virtiofsd's parent-death
signal is tied to the thread that forked them. Requests are JSON lines; ``exec`` answers with a
stream of ``{"stdout"|"stderr": base64}`` lines and a final ``{"exit": N}``. The supervisor exits
(stopping the VM) when the container ends or on ``stop``; SIGTERM/SIGHUP unwind it the same way.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Generator, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from ..errors import ContainerStateError, OciError, VzLinuxError
from ..profiles import KernelProfile
from ..vm.agent_client import ExecControl
from ..vm.agent_protocol import MAX_WINSIZE
from ..vm.port_forward import PortForwarder
from . import guest, transfer, wire
from .config import RuntimeConfig
from .container import Attach, ContainerVm
from .spec import merge_env
from .state import (
    SUPERVISOR_LOG,
    SUPERVISOR_MODULE,
    SUPERVISOR_SOCKET,
    ContainerStore,
    Status,
    now,
    process_start_time,
)

_LINE_LIMIT = 1 << 20
_GO = b"go\n"  # spawn() → supervisor on its stdin: "your pid is recorded, boot"


# --- socket paths: bound through /proc/self/fd so deep data dirs fit in sun_path ----------------
@contextlib.contextmanager
def _short_path(path: Path) -> Iterator[str]:
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)


def listen(path: Path) -> socket.socket:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with _short_path(path) as p:
        sock.bind(p)
    os.chmod(path, 0o600)
    sock.listen(16)
    return sock


def send_line(conn: socket.socket, msg: dict[str, Any]) -> None:
    """One more JSON line to the supervisor (after an exec's ``started``)."""
    _send(conn, msg)


def _send(conn: socket.socket, msg: dict[str, Any]) -> None:
    conn.sendall(json.dumps(msg).encode() + b"\n")


def _lines(conn: socket.socket) -> Iterator[dict[str, Any]]:
    buf = b""
    while True:
        chunk = conn.recv(65536)
        if not chunk:
            return
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            yield json.loads(line)
        if len(buf) > _LINE_LIMIT:
            raise OciError("supervisor sent an oversized message")


def connect(cdir: Path, timeout: float | None = None) -> socket.socket:
    """A connected socket to a container's supervisor (for the byte-stream requests of :mod:`.wire`)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        with _short_path(cdir / SUPERVISOR_SOCKET) as p:
            sock.connect(p)
    except (ConnectionRefusedError, FileNotFoundError):
        sock.close()
        raise ContainerStateError(f"the supervisor of container {cdir.name} is not running",
                                  hint="see `vz oci ps -a`; remove it with `vz oci rm`") from None
    return sock


def request(cdir: Path, msg: dict[str, Any],
            timeout: float | None = None) -> Generator[dict[str, Any], None, None]:
    """Send one request to a container's supervisor; yield its replies."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    yield from request_on(sock, cdir, msg, timeout)


def request_on(sock: socket.socket, cdir: Path, msg: dict[str, Any],
               timeout: float | None = None) -> Generator[dict[str, Any], None, None]:
    """:func:`request` on a socket the caller made, so it can send more lines (exec's stdin)."""
    sock.settimeout(timeout)
    try:
        with _short_path(cdir / SUPERVISOR_SOCKET) as p:
            sock.connect(p)
        _send(sock, msg)
        yield from _lines(sock)
    except (ConnectionRefusedError, FileNotFoundError):
        raise ContainerStateError(f"the supervisor of container {cdir.name} is not running",
                                  hint="see `vz oci ps -a`; remove it with `vz oci rm`") from None
    except TimeoutError:
        raise ContainerStateError(f"the supervisor of container {cdir.name} did not answer "
                                  f"within {timeout:.0f}s") from None
    finally:
        sock.close()


# --- spawning -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Settings:
    """The RuntimeConfig, as passed on the supervisor's command line."""

    linux_profile: str | None
    data_dir: str
    agent_ready_timeout: float
    exec_timeout: float | None

    @classmethod
    def of(cls, cfg: RuntimeConfig) -> _Settings:
        return cls(cfg.linux_profile.value if cfg.linux_profile else None, str(cfg.data_dir),
                   cfg.agent_ready_timeout, cfg.exec_timeout)

    def config(self, network: bool, cpus: int, memory_mib: int) -> RuntimeConfig:
        return RuntimeConfig(
            linux_profile=KernelProfile.parse(self.linux_profile) if self.linux_profile else None,
            data_dir=Path(self.data_dir), cpus=cpus, memory_mib=memory_mib, network=network,
            agent_ready_timeout=self.agent_ready_timeout, exec_timeout=self.exec_timeout)


def spawn(cfg: RuntimeConfig, container_id: str) -> None:
    """Start the supervisor of a prepared container and wait until its VM is up (or failed).

    The supervisor does nothing until it reads ``go`` on its stdin, which is sent only once its pid
    is recorded in ``state.json``: if we are killed in between, it reads EOF and exits, so
    ``vz oci rm -f`` can always stop what ``create`` started (docs/oci.md, "Crash safety").
    """
    store = ContainerStore(cfg.containers_dir)
    cdir = store.dir(container_id).resolve()  # is_supervisor() recognises it by this path
    listener = listen(cdir / SUPERVISOR_SOCKET)
    try:
        with open(cdir / SUPERVISOR_LOG, "ab") as log:
            # Not run.spawn(): that helper dies with its parent, and this one must outlive the CLI.
            proc = subprocess.Popen(
                [sys.executable, "-m", SUPERVISOR_MODULE, str(cdir), str(listener.fileno()),
                 json.dumps(asdict(_Settings.of(cfg)))],
                stdin=subprocess.PIPE, stdout=log, stderr=log, pass_fds=(listener.fileno(),),
                start_new_session=True, close_fds=True,
            )
    finally:
        listener.close()
    assert proc.stdin is not None
    with proc.stdin:
        start = None
        for _ in range(100):  # /proc/PID/stat appears at once; the loop only covers a racing reader
            start = process_start_time(proc.pid)
            if start is not None:
                break
            time.sleep(0.01)
        store.update(container_id, supervisor_pid=proc.pid, supervisor_start=start)
        with contextlib.suppress(BrokenPipeError):
            proc.stdin.write(_GO)
    reply: dict[str, Any] = {}
    with contextlib.suppress(ContainerStateError), contextlib.closing(
            request(cdir, {"op": "ready"}, timeout=cfg.agent_ready_timeout + 120)) as replies:
        reply = next(replies, {})
    if reply.get("ok"):
        return
    state = store.read(container_id)
    err = VzLinuxError(reply.get("error") or state.error or "the container's supervisor died while booting "
                       f"(see {cdir / SUPERVISOR_LOG})")
    err.exit_code = int(reply.get("exit_code") or state.error_code or OciError.exit_code)
    raise err


def wait_gone(pid: int, start: int | None, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process_start_time(pid) != start:
            return True
        time.sleep(0.05)
    return process_start_time(pid) != start


# --- the supervisor process ---------------------------------------------------------------------
class Supervisor:
    def __init__(self, cdir: Path, listener: socket.socket, settings: _Settings) -> None:
        self.cdir = cdir
        self.listener = listener
        self.store = ContainerStore(cdir.parent)
        self.id = cdir.name
        state = self.store.read(self.id)
        self.cfg = settings.config(state.network, state.cpus, state.memory_mib)
        self.cvm: ContainerVm | None = None
        self.booted = threading.Event()
        self.boot_error: VzLinuxError | None = None
        self.finished = threading.Event()  # the container's process ended
        self.shutdown = threading.Event()
        self.lock = threading.Lock()
        self.runner: threading.Thread | None = None
        self.forwarder = PortForwarder(())  # -p: owned here, served from `start` until the end
        self.exit_code: int | None = None
        self.stopping = False

    # connection handling (threads)
    def serve(self) -> None:
        while not self.shutdown.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            try:
                reader = wire.Reader(conn)
                msg = reader.json()
                if msg is not None:
                    self._dispatch(conn, msg, reader)
            except (OSError, ValueError):
                return
            except VzLinuxError as e:
                with contextlib.suppress(OSError):
                    _send(conn, {"ok": False, "error": e.one_line(), "exit_code": e.exit_code})

    def _dispatch(self, conn: socket.socket, msg: dict[str, Any], reader: wire.Reader) -> None:
        op = msg.get("op")
        handlers: dict[str, Callable[[socket.socket, dict[str, Any]], None]] = {
            "ready": self._op_ready, "start": self._op_start,
            "stop": self._op_stop, "status": self._op_status, "stats": self._op_stats,
        }
        streams: dict[str, Callable[[socket.socket, dict[str, Any], wire.Reader], None]] = {
            "copy_in": self._op_copy_in, "copy_out": self._op_copy_out, "exec": self._op_exec,
        }
        if str(op) in streams:
            streams[str(op)](conn, msg, reader)
            return
        handler = handlers.get(str(op))
        if handler is None:
            raise OciError(f"unknown supervisor request {op!r}")
        handler(conn, msg)

    def _up(self) -> ContainerVm:
        """The VM, while the container's filesystem lives (created or running)."""
        if self.cvm is None or self.finished.is_set() or self.boot_error is not None:
            raise ContainerStateError(f"container {self.id} has no running VM")
        return self.cvm

    def _op_copy_in(self, conn: socket.socket, msg: dict[str, Any], reader: wire.Reader) -> None:
        """``cp`` into the container: the client's chunks are a tar, extracted at ``path``."""
        cvm = self._up()

        def chunks() -> Iterator[bytes]:
            while chunk := reader.chunk():
                yield chunk

        transfer.push_tar(cvm.vm, str(msg.get("path")), chunks())
        _send(conn, {"ok": True})

    def _op_copy_out(self, conn: socket.socket, msg: dict[str, Any], reader: wire.Reader) -> None:
        """``cp`` out of the container: ``{"ok"}``, the tar of ``path`` as chunks, then the result."""
        cvm = self._up()
        _send(conn, {"ok": True})
        try:
            warnings = transfer.pull_tar(cvm.vm, str(msg.get("path")), lambda d: wire.send_chunk(conn, d))
        except VzLinuxError as e:
            wire.send_end(conn)
            _send(conn, {"ok": False, "error": e.one_line(), "exit_code": e.exit_code})
            return
        wire.send_end(conn)
        _send(conn, {"ok": True, "warnings": warnings})

    def _op_stats(self, conn: socket.socket, msg: dict[str, Any]) -> None:
        """The guest's figures for the container's cgroup (raw ``key value`` lines, bounded) and
        QEMU's resident memory on the host."""
        cvm = self._up()
        t0 = time.monotonic()
        r = cvm.vm.agent.exec_collect(["/bin/sh", "-c", guest.stats_script(self.id)], timeout=30,
                                      max_output=64 << 10)
        _send(conn, {"ok": True, "guest": r.stdout.decode("ascii", errors="replace"),
                     "guest_exit": r.exit_code, "vm_rss_bytes": cvm.vm.rss_bytes(),
                     "sampled_monotonic": (t0 + time.monotonic()) / 2})

    def _op_ready(self, conn: socket.socket, msg: dict[str, Any]) -> None:
        self.booted.wait()
        if self.boot_error is not None:
            raise self.boot_error
        _send(conn, {"ok": True})

    def _op_status(self, conn: socket.socket, msg: dict[str, Any]) -> None:
        _send(conn, {"ok": True, "booted": self.booted.is_set(), "finished": self.finished.is_set()})

    def _op_start(self, conn: socket.socket, msg: dict[str, Any]) -> None:
        self.booted.wait()
        if self.boot_error is not None:
            raise self.boot_error
        with self.lock:
            if self.runner is not None:
                raise ContainerStateError(f"container {self.id} is already started")
            self.store.update(self.id, status=Status.running, started=now())
            self.runner = threading.Thread(target=self._run_container, daemon=True)
            self.runner.start()
        _send(conn, {"ok": True})

    def _run_container(self) -> None:
        assert self.cvm is not None
        try:
            self.forwarder.start(self.cvm.vm.agent, self.cvm.netns_path)
            code = self.cvm.run(None, None)
            status = Status.stopped if self.stopping else Status.exited
            self.exit_code = code
            self.store.update(self.id, status=status, exit_code=code, finished=now())
        except BaseException as e:
            self.store.update(self.id, status=Status.failed, error=str(e), finished=now())
        finally:
            self.finished.set()
            if not self.stopping:  # a stop in progress shuts down itself, once its kills are done
                self.shutdown.set()

    def _op_exec(self, conn: socket.socket, msg: dict[str, Any], reader: wire.Reader) -> None:
        if self.runner is None or self.finished.is_set() or self.cvm is None:
            raise ContainerStateError(f"container {self.id} is not running",
                                      hint=f"start it with `vz oci start {self.id}`")
        send_lock = threading.Lock()

        def sink(stream: str) -> Callable[[bytes], None]:
            def write(data: bytes) -> None:
                with send_lock:
                    _send(conn, {stream: base64.b64encode(data).decode()})
            return write

        args = [str(a) for a in msg.get("args", [])]
        if not args:
            raise OciError("exec needs a command")
        self.cvm.running_pid(f"container {self.id} is not running", self.finished)
        # crun exec's --env replaces the process environment: start from the container's own.
        env = merge_env(self.cvm.state.env, [str(e) for e in msg.get("env", [])])
        watchers: list[threading.Thread] = []

        def started(stream: ExecControl) -> None:
            with send_lock:
                _send(conn, {"started": True})  # from now on the client may send stdin/resize
            watchers.append(_follow_client(reader, stream))

        attach = Attach(tty=msg.get("tty") is True, interactive=msg.get("interactive") is True,
                        winsize=_winsize(msg.get("winsize")), on_started=started)
        try:
            code = self.cvm.exec(args, env, msg.get("cwd"), sink("stdout"), sink("stderr"), attach)
            with send_lock:
                _send(conn, {"exit": code})
        finally:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RD)  # ends the watcher's read
            for w in watchers:
                w.join(timeout=5)

    def _op_stop(self, conn: socket.socket, msg: dict[str, Any]) -> None:
        timeout = float(msg.get("timeout", 10))
        self.booted.wait()
        try:
            if self.runner is not None and not self.finished.is_set() and self.cvm is not None:
                self.stopping = True
                try:
                    self.cvm.kill("TERM")
                    if not self.finished.wait(timeout):
                        self.cvm.kill("KILL")
                        self.finished.wait(30)
                except VzLinuxError:
                    if not self.finished.is_set():  # crun kill failing because it already exited is fine
                        raise
            elif self.runner is None and self.boot_error is None:
                self.store.update(self.id, status=Status.stopped, finished=now())
            _send(conn, {"ok": True, "exit_code": self.exit_code})
        finally:
            self.shutdown.set()  # after the reply: the process exits soon after this

    # the main thread
    def main(self) -> int:
        threading.Thread(target=self.serve, daemon=True).start()
        try:
            bundle = self.cfg.resolve_kernel()
            state = self.store.read(self.id)
            self.forwarder = PortForwarder(state.ports)
            self.forwarder.bind()  # before the boot: a port in use fails `create` (71)
            with ContainerVm(self.cfg, state, bundle, self.cdir) as cvm:
                self.cvm = cvm
                self.store.update(self.id, status=Status.created)
                self.booted.set()
                self.shutdown.wait()
                if self.runner is not None:
                    self.runner.join(5)
        except VzLinuxError as e:
            self._fail(e)
            return e.exit_code
        except KeyboardInterrupt:
            self._fail(OciError("the supervisor was interrupted"))
            return 130
        except Exception as e:  # a bug: keep the traceback in supervisor.log, report one line
            traceback.print_exc()
            self._fail(OciError(f"supervisor crashed: {type(e).__name__}: {e}"))
            return 1
        finally:
            self.forwarder.close()
            self.listener.close()
            with contextlib.suppress(FileNotFoundError):
                (self.cdir / SUPERVISOR_SOCKET).unlink()
        return 0

    def _fail(self, e: VzLinuxError) -> None:
        self.boot_error = e
        with contextlib.suppress(Exception):
            if self.store.read(self.id).status in (Status.creating, Status.created, Status.running):
                self.store.update(self.id, status=Status.failed, error=e.one_line(),
                                  error_code=e.exit_code, finished=now())
        self.booted.set()
        time.sleep(0.2)  # let a waiting `ready` reply go out before the process exits


def _winsize(value: object) -> tuple[int, int] | None:
    if (isinstance(value, list) and len(value) == 2
            and all(isinstance(v, int) and 1 <= v <= MAX_WINSIZE for v in value)):
        return value[0], value[1]
    return None


def _follow_client(reader: wire.Reader, stream: ExecControl) -> threading.Thread:
    """After ``started`` the exec client may send ``{"stdin": base64}``, ``{"eof": true}`` and
    ``{"resize": [rows, cols]}`` lines; the connection ending means it went away (Ctrl-C, killed),
    and then its command is killed in the guest instead of running on unseen."""
    def watch() -> None:
        with contextlib.suppress(OSError, ValueError, VzLinuxError):
            # the same buffered reader as the request: what followed it may already sit in its buffer
            while (line := reader.json()) is not None:
                if "stdin" in line:
                    stream.write_stdin(base64.b64decode(str(line["stdin"])))
                elif line.get("eof") is True:
                    stream.close_stdin()
                elif (size := _winsize(line.get("resize"))) is not None:
                    stream.resize(*size)
        close = getattr(stream, "close", None)
        if close is not None:
            close()  # a no-op once the command has finished

    thread = threading.Thread(target=watch, name="vz-exec-client", daemon=True)
    thread.start()
    return thread


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: list[str]) -> int:
    cdir, fd, settings = Path(argv[0]), int(argv[1]), _Settings(**json.loads(argv[2]))
    if sys.stdin.buffer.readline() != _GO:
        return 0  # the creating CLI died before recording us: nobody could stop us, so never start
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGHUP, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    listener = socket.socket(fileno=fd)
    return Supervisor(cdir, listener, settings).main()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
