"""Container records under ``<data dir>/containers/<id>/`` that outlive a CLI invocation.

Each container directory holds ``state.json`` (written atomically; the supervisor and the CLI
both update it under a file lock), the runtime ``config.json`` and a copy of the bundle's ``crun``
(both shared into the VM), ``stdout.log``/``stderr.log``, and while a supervisor runs, its Unix
socket and log. A supervisor is identified by pid, process start time *and* its command line
(``-m vz_linux.oci.supervisor <container dir>``), so neither a reused pid nor a pid written into
``state.json`` by someone else is ever signalled.

Everything read back is untrusted (docs/security.md, "Hostile inputs"): a container's id is the
name of its directory, ``[0-9a-f]{12}``; a ``state.json`` whose ``id`` differs, or whose fields
have the wrong types or impossible values, is refused with :class:`ContainerStateError`. Records
hold ``-e`` values, so directories are 0700 and ``state.json``/``config.json`` 0600.
"""

from __future__ import annotations

import contextlib
import enum
import ipaddress
import json
import logging
import os
import re
import secrets
import shutil
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from filelock import FileLock
from pydantic import TypeAdapter, ValidationError

from ..clock import utc_timestamp
from ..errors import ContainerStateError, InvalidConfigError
from ..fsutil import write_atomic
from ..vm.port_forward import ForwardSpec
from .spec import Volume

STATE_FILE = "state.json"
CONFIG_FILE = "config.json"
STDOUT_LOG = "stdout.log"
STDERR_LOG = "stderr.log"
SUPERVISOR_SOCKET = "supervisor.sock"
SUPERVISOR_LOG = "supervisor.log"
PRIVATE_FILE_MODE = 0o600  # state.json, config.json: they hold the container's environment
PRIVATE_DIR_MODE = 0o700
SUPERVISOR_MODULE = "vz_linux.oci.supervisor"
_ID = re.compile(r"[0-9a-f]{12}")
log = logging.getLogger(__name__)
_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")


class Status(enum.StrEnum):
    creating = "creating"  # supervisor booting the VM
    created = "created"  # VM up, rootfs prepared, container process not started
    running = "running"
    exited = "exited"  # the container's process ended by itself
    stopped = "stopped"  # ended by `vz oci stop`
    failed = "failed"  # the VM or the runtime failed; see `error`


LIVE = frozenset({Status.creating, Status.created, Status.running})


def now() -> str:
    """The current UTC time as recorded in ``state.json``, e.g. ``2026-12-04T16:19:21.123Z``."""
    return utc_timestamp(timespec="milliseconds")


@dataclass(frozen=True)
class ContainerState:
    id: str
    name: str
    image: str
    rootfs: str
    profile: str
    args: tuple[str, ...]
    env: tuple[str, ...]
    cwd: str
    volumes: tuple[Volume, ...] = ()
    ports: tuple[ForwardSpec, ...] = ()  # -p: forwarded while the VM's owner runs (docs/oci.md)
    network: bool = False
    cpus: int = 1
    memory_mib: int = 256
    image_digest: str | None = None  # the image's manifest digest (OCI layouts, registry images)
    status: Status = Status.creating
    exit_code: int | None = None
    error: str | None = None
    error_code: int | None = None  # exit code of the error that failed it
    created: str = field(default_factory=now)
    started: str | None = None
    finished: str | None = None
    supervisor_pid: int | None = None
    supervisor_start: int | None = None

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["args"], d["env"] = list(self.args), list(self.env)
        d["volumes"] = [v.to_json() for v in self.volumes]
        d["status"] = self.status.value
        return d

    @classmethod
    def parse(cls, text: str, where: Path) -> ContainerState:
        """A ``state.json``'s text, every field type-checked (no coercion), values sanity-checked."""
        try:
            state = _STATE.validate_json(text, strict=True)
        except ValidationError as e:
            first = e.errors()[0]
            field_name = ".".join(str(x) for x in first["loc"]) or "(top level)"
            raise ContainerStateError(f"container state {where} is corrupt: {field_name}: {first['msg']}",
                                      hint=f"remove {where.parent}") from None
        bad = state._impossible()
        if bad:
            raise ContainerStateError(f"container state {where} is corrupt: {bad}", hint=f"remove {where.parent}")
        return state

    def _impossible(self) -> str | None:
        """What no record we wrote can hold (a pid ≤ 1 would signal init, us, or everything)."""
        if self.supervisor_pid is not None and self.supervisor_pid <= 1:
            return f"supervisor_pid {self.supervisor_pid}"
        if self.cpus < 1 or self.memory_mib < 1:
            return f"cpus {self.cpus} / memory_mib {self.memory_mib}"
        if any(not v.destination.startswith("/") for v in self.volumes):
            return "a volume with a relative container path"
        for p in self.ports:
            if not (1 <= p.host_port <= 65535 and 1 <= p.guest_port <= 65535 and _is_ip(p.host_ip)):
                return f"port mapping {p.host_ip}:{p.host_port}:{p.guest_port}"
        return None


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


_STATE: TypeAdapter[ContainerState] = TypeAdapter(ContainerState)


def check_id(container_id: str) -> str:
    """``container_id`` if it is a container id (12 lowercase hex digits), else ContainerStateError."""
    if not _ID.fullmatch(container_id):
        raise ContainerStateError(f"{container_id!r} is not a container id (12 hex digits)",
                                  hint="see `vz oci ps -a`")
    return container_id


def process_start_time(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat (clock ticks since boot), None if no such process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may contain spaces and parentheses: split after the last ')'.
    fields = text[text.rindex(")") + 2:].split()
    if fields[0] in ("Z", "X"):
        return None  # a zombie is as good as gone
    return int(fields[19])


class ContainerStore:
    def __init__(self, containers_dir: Path) -> None:
        self.root = containers_dir

    def dir(self, container_id: str) -> Path:
        return self.root / check_id(container_id)

    @contextlib.contextmanager
    def locked(self, container_id: str) -> Iterator[None]:
        with FileLock(str(self.dir(container_id) / ".lock"), timeout=60):
            yield

    def new_id(self) -> str:
        return secrets.token_hex(6)

    def validate_name(self, name: str) -> None:
        if not name or not set(name) <= _NAME_CHARS or name[0] in ".-":
            raise InvalidConfigError(f"container name {name!r} may only use [A-Za-z0-9_.-]")
        for st in self.list():
            if st.name == name:
                raise ContainerStateError(f"a container named {name!r} already exists ({st.id})",
                                          hint=f"remove it with `vz oci rm {name}` or pick another --name")

    def create_dir(self, container_id: str) -> Path:
        d = self.dir(container_id)
        self.root.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR_MODE)
        d.mkdir(mode=PRIVATE_DIR_MODE)
        os.chmod(d, PRIVATE_DIR_MODE)  # whatever the umask
        return d

    def write(self, state: ContainerState) -> None:
        write_atomic(self.dir(state.id) / STATE_FILE, (json.dumps(state.to_json(), indent=2) + "\n").encode(),
                     mode=PRIVATE_FILE_MODE)

    def read(self, container_id: str) -> ContainerState:
        """The record in the directory named ``container_id``; its ``id`` must be that name."""
        path = self.dir(container_id) / STATE_FILE
        try:
            text = path.read_text()
        except FileNotFoundError:
            raise ContainerStateError(f"no container {container_id}") from None
        except (OSError, UnicodeDecodeError) as e:
            raise ContainerStateError(f"cannot read container state {path}: {e}") from None
        state = ContainerState.parse(text, path)
        if state.id != container_id:
            raise ContainerStateError(
                f"container state {path} names the id {state.id!r}, not its directory's: refused",
                hint=f"the record was altered; remove {path.parent}")
        return state

    def update(self, container_id: str, **changes: Any) -> ContainerState:
        with self.locked(container_id):
            state = replace(self.read(container_id), **changes)
            self.write(state)
            return state

    def list(self) -> list[ContainerState]:
        """Every readable record (by directory name); broken ones are skipped."""
        out: list[ContainerState] = []
        if not self.root.is_dir():
            return out
        for d in sorted(self.root.iterdir()):
            if not _ID.fullmatch(d.name) or d.is_symlink() or not (d / STATE_FILE).is_file():
                continue
            try:
                out.append(self.read(d.name))
            except ContainerStateError as e:
                log.debug("skipped %s", e.one_line())  # named by its id, it reports this itself
        return sorted(out, key=lambda s: s.created)

    def find(self, ref: str) -> ContainerState:
        """By exact name, exact id, or unique id prefix. A broken record named by its exact id
        reports what is wrong with it."""
        states = self.list()
        for st in states:
            if ref in (st.name, st.id):
                return st
        if _ID.fullmatch(ref) and (self.root / ref).is_dir():
            return self.read(ref)
        matches = [st for st in states if st.id.startswith(ref)]
        if len(matches) == 1:
            return matches[0]
        if matches:
            raise ContainerStateError(f"{ref!r} matches several containers: {', '.join(s.id for s in matches)}")
        raise ContainerStateError(f"no container named {ref!r}", hint="list them with `vz oci ps -a`")

    def supervisor_alive(self, state: ContainerState) -> bool:
        """Its supervisor runs: the recorded pid and start time match a process that is this
        container's supervisor (so a pid someone wrote into state.json is never signalled)."""
        if state.supervisor_pid is None or state.supervisor_start is None:
            return False
        return is_supervisor(state.supervisor_pid, state.supervisor_start, self.dir(state.id))

    def effective_status(self, state: ContainerState) -> Status:
        """A live status whose supervisor is gone is reported as failed."""
        if state.status in LIVE and state.supervisor_pid is not None and not self.supervisor_alive(state):
            return Status.failed
        return state.status

    def remove(self, container_id: str) -> None:
        d = self.dir(container_id)
        if not d.is_symlink():
            shutil.rmtree(d, ignore_errors=True)


def is_supervisor(pid: int, start: int, cdir: Path) -> bool:
    """Process ``pid``, started at ``start``, runs ``-m vz_linux.oci.supervisor <cdir>``."""
    if pid <= 1 or process_start_time(pid) != start:
        return False
    try:
        argv = [a.decode(errors="replace") for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")]
    except OSError:
        return False
    try:
        at = argv.index(SUPERVISOR_MODULE)
    except ValueError:
        return False
    if at < 1 or argv[at - 1] != "-m" or len(argv) <= at + 1:
        return False
    return os.path.realpath(argv[at + 1]) == os.path.realpath(cdir)
