"""``create/start/exec/ps/stop/rm/logs``: container operations across CLI invocations.

Each talks to the container's supervisor (:mod:`.supervisor`) through its socket, or only to the
state store when no VM is involved (``ps``, ``logs``, ``rm`` of a finished container).
"""

from __future__ import annotations

import base64
import contextlib
import os
import shlex
import signal
import socket
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import ContainerStateError, OciError
from ..vm.guest_log import read_capped
from . import supervisor
from .config import RuntimeConfig
from .container import DETACHED, Attach, ContainerRequest, Sink, prepare_container, store_for
from .spec import parse_env
from .state import LIVE, STDERR_LOG, STDOUT_LOG, SUPERVISOR_LOG, ContainerState, Status, now


def create(cfg: RuntimeConfig, req: ContainerRequest) -> ContainerState:
    """Prepare the container and boot its VM under a supervisor; the process is not started."""
    state, _bundle = prepare_container(cfg, req)
    try:
        supervisor.spawn(cfg, state.id)
    except BaseException:
        # The VM never came up: leave neither a supervisor nor a half-made container behind.
        _kill_supervisor(cfg, store_for(cfg).read(state.id), grace=15, terminate=True)
        store_for(cfg).remove(state.id)
        raise
    return store_for(cfg).read(state.id)


def run_detached(cfg: RuntimeConfig, req: ContainerRequest) -> ContainerState:
    """``run -d``: create, then start; a start that fails leaves no VM behind."""
    state = create(cfg, req)
    try:
        return start(cfg, state.id)
    except BaseException:
        with contextlib.suppress(Exception):
            remove(cfg, state.id, force=True)
        raise


def _reply(cfg: RuntimeConfig, state: ContainerState, msg: dict[str, Any], timeout: float | None) -> dict[str, Any]:
    cdir = store_for(cfg).dir(state.id)
    with contextlib.closing(supervisor.request(cdir, msg, timeout=timeout)) as replies:
        reply = next(replies, None)
    if reply is None:
        raise ContainerStateError(f"the supervisor of {state.name} closed the connection",
                                  hint=f"see {cdir / SUPERVISOR_LOG}")
    if not reply.get("ok"):
        err = OciError(str(reply.get("error")))
        err.exit_code = int(reply.get("exit_code") or OciError.exit_code)
        raise err
    return reply


def _live(cfg: RuntimeConfig, ref: str, action: str) -> ContainerState:
    store = store_for(cfg)
    state = store.find(ref)
    status = store.effective_status(state)
    if status not in LIVE:
        raise ContainerStateError(f"cannot {action} container {state.name}: it is {status.value}",
                                  hint="see `vz oci ps -a`")
    return state


def start(cfg: RuntimeConfig, ref: str) -> ContainerState:
    state = _live(cfg, ref, "start")
    if state.status is Status.running:
        raise ContainerStateError(f"container {state.name} is already running")
    _reply(cfg, state, {"op": "start"}, timeout=cfg.agent_ready_timeout + 120)
    return store_for(cfg).read(state.id)


class _RelayedExec:
    """A container exec driven through its supervisor's socket (stdin, EOF, resize lines)."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._lock = threading.Lock()

    def _line(self, msg: dict[str, Any]) -> None:
        with self._lock:
            supervisor.send_line(self._sock, msg)

    def write_stdin(self, data: bytes, *, timeout: float | None = None) -> None:
        for i in range(0, len(data), 1 << 16):
            self._line({"stdin": base64.b64encode(data[i:i + (1 << 16)]).decode()})

    def close_stdin(self, *, timeout: float | None = None) -> None:
        self._line({"eof": True})

    def resize(self, rows: int, cols: int) -> None:
        with contextlib.suppress(OSError):
            self._line({"resize": [rows, cols]})


def exec_in(cfg: RuntimeConfig, ref: str, args: Sequence[str], *, env: Sequence[str] = (),
            cwd: str | None = None, on_stdout: Sink, on_stderr: Sink, attach: Attach = DETACHED) -> int:
    state = _live(cfg, ref, "exec in")
    if state.status is not Status.running:
        raise ContainerStateError(f"container {state.name} is {state.status.value}, not running",
                                  hint=f"start it with `vz oci start {state.name}`")
    if not args:
        raise OciError("exec needs a command", hint="vz oci exec NAME -- CMD...")
    msg = {"op": "exec", "args": list(args), "env": list(parse_env(env)), "cwd": cwd, "tty": attach.tty,
           "interactive": attach.interactive, "winsize": list(attach.winsize) if attach.winsize else None}
    cdir = store_for(cfg).dir(state.id)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with contextlib.closing(supervisor.request_on(sock, cdir, msg, timeout=cfg.exec_timeout)) as replies:
        for reply in replies:
            if "stdout" in reply:
                on_stdout(base64.b64decode(reply["stdout"]))
            elif "stderr" in reply:
                on_stderr(base64.b64decode(reply["stderr"]))
            elif "started" in reply:
                if attach.on_started is not None:
                    attach.on_started(_RelayedExec(sock))
            elif "exit" in reply:
                return int(reply["exit"])
            elif not reply.get("ok", True):
                err = OciError(str(reply.get("error")))
                err.exit_code = int(reply.get("exit_code") or OciError.exit_code)
                raise err
    raise ContainerStateError(f"the supervisor of {state.name} went away during exec")


def _kill_supervisor(cfg: RuntimeConfig, state: ContainerState, *, grace: float = 30.0,
                     terminate: bool = False) -> None:
    """Make sure no supervisor (and so no VM: QEMU dies with it) is left for this container."""
    if state.supervisor_pid is None or not store_for(cfg).supervisor_alive(state):
        return  # none recorded, gone, or a process that is not this container's supervisor
    if terminate and not supervisor.wait_gone(state.supervisor_pid, state.supervisor_start, 0):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(state.supervisor_pid, signal.SIGTERM)  # it unwinds: VM stopped, socket removed
    if supervisor.wait_gone(state.supervisor_pid, state.supervisor_start, grace):
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(state.supervisor_pid, signal.SIGKILL)
    supervisor.wait_gone(state.supervisor_pid, state.supervisor_start, 10)


def stop(cfg: RuntimeConfig, ref: str, timeout: float = 10.0) -> ContainerState:
    store = store_for(cfg)
    state = store.find(ref)
    if store.supervisor_alive(state):
        with contextlib.suppress(ContainerStateError):
            _reply(cfg, state, {"op": "stop", "timeout": timeout}, timeout=timeout + 60)
        _kill_supervisor(cfg, state)
    state = store.read(state.id)
    if state.status in LIVE:
        state = store.update(state.id, status=Status.stopped, finished=state.finished or now())
    return state


def remove(cfg: RuntimeConfig, ref: str, *, force: bool = False) -> str:
    store = store_for(cfg)
    state = store.find(ref)
    if store.effective_status(state) in LIVE:
        if not force:
            raise ContainerStateError(f"container {state.name} is {state.status.value}",
                                      hint=f"stop it first with `vz oci stop {state.name}`, or use `rm -f`")
        stop(cfg, state.id, timeout=0)
    _kill_supervisor(cfg, state)
    store.remove(state.id)
    return state.id


def logs(cfg: RuntimeConfig, ref: str) -> tuple[bytes, bytes]:
    store = store_for(cfg)
    state = store.find(ref)
    d = store.dir(state.id)
    # The logs are size-capped with one rotated part each (docs/oci.md): both, oldest first.
    return read_capped(d / STDOUT_LOG), read_capped(d / STDERR_LOG)


@dataclass(frozen=True)
class PsRow:
    id: str
    name: str
    image: str
    status: Status
    exit_code: int | None
    created: str
    command: str

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "image": self.image, "status": self.status.value,
                "exit_code": self.exit_code, "created": self.created, "command": self.command}


def ps(cfg: RuntimeConfig, *, all_: bool = False) -> list[PsRow]:
    store = store_for(cfg)
    rows = []
    for st in store.list():
        status = store.effective_status(st)
        if all_ or status in LIVE:
            rows.append(PsRow(st.id, st.name, st.image, status, st.exit_code, st.created, shlex.join(st.args)))
    return rows
