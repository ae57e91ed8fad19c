"""Container records under ``<data dir>/containers/<id>/`` that outlive a CLI invocation.

Each container directory holds ``state.json`` (written atomically; the supervisor and the CLI
both update it under a file lock), the runtime ``config.json`` and a copy of the bundle's ``crun``
(both shared into the VM), ``stdout.log``/``stderr.log``, and while a supervisor runs, its Unix
socket and log. A supervisor is identified by pid *and* process start time so a reused pid is
never mistaken for it.
"""

from __future__ import annotations

import contextlib
import enum
import json
import os
import secrets
import shutil
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from filelock import FileLock

from ..clock import utc_timestamp
from ..errors import ContainerStateError, InvalidConfigError
from ..fsutil import write_atomic
from .spec import Volume

STATE_FILE = "state.json"
CONFIG_FILE = "config.json"
STDOUT_LOG = "stdout.log"
STDERR_LOG = "stderr.log"
SUPERVISOR_SOCKET = "supervisor.sock"
SUPERVISOR_LOG = "supervisor.log"
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
    network: bool = False
    cpus: int = 1
    memory_mib: int = 256
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
    def from_json(cls, d: dict[str, Any]) -> ContainerState:
        d = dict(d)
        d["args"], d["env"] = tuple(d["args"]), tuple(d["env"])
        d["volumes"] = tuple(Volume.from_json(v) for v in d.get("volumes", ()))
        d["status"] = Status(d["status"])
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})


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
        return self.root / container_id

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
        d.mkdir(parents=True, exist_ok=False)
        return d

    def write(self, state: ContainerState) -> None:
        write_atomic(self.dir(state.id) / STATE_FILE, (json.dumps(state.to_json(), indent=2) + "\n").encode())

    def read(self, container_id: str) -> ContainerState:
        path = self.dir(container_id) / STATE_FILE
        try:
            return ContainerState.from_json(json.loads(path.read_text()))
        except FileNotFoundError:
            raise ContainerStateError(f"no container {container_id}") from None
        except (ValueError, KeyError, TypeError) as e:
            raise ContainerStateError(f"container state {path} is corrupt: {e}",
                                      hint=f"remove {self.dir(container_id)}") from None

    def update(self, container_id: str, **changes: Any) -> ContainerState:
        with self.locked(container_id):
            state = replace(self.read(container_id), **changes)
            self.write(state)
            return state

    def list(self) -> list[ContainerState]:
        out: list[ContainerState] = []
        if not self.root.is_dir():
            return out
        for d in sorted(self.root.iterdir()):
            if (d / STATE_FILE).is_file():
                with contextlib.suppress(ContainerStateError):
                    out.append(self.read(d.name))
        return sorted(out, key=lambda s: s.created)

    def find(self, ref: str) -> ContainerState:
        """By exact name, exact id, or unique id prefix."""
        states = self.list()
        for st in states:
            if ref in (st.name, st.id):
                return st
        matches = [st for st in states if st.id.startswith(ref)]
        if len(matches) == 1:
            return matches[0]
        if matches:
            raise ContainerStateError(f"{ref!r} matches several containers: {', '.join(s.id for s in matches)}")
        raise ContainerStateError(f"no container named {ref!r}", hint="list them with `vz oci ps -a`")

    def supervisor_alive(self, state: ContainerState) -> bool:
        if state.supervisor_pid is None or state.supervisor_start is None:
            return False
        return process_start_time(state.supervisor_pid) == state.supervisor_start

    def effective_status(self, state: ContainerState) -> Status:
        """A live status whose supervisor is gone is reported as failed."""
        if state.status in LIVE and state.supervisor_pid is not None and not self.supervisor_alive(state):
            return Status.failed
        return state.status

    def remove(self, container_id: str) -> None:
        shutil.rmtree(self.dir(container_id), ignore_errors=True)


def read_log(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return b""


def same_file_or_copy(src: Path, dst: Path) -> None:
    """Hard-link the bundle's crun into the container dir (copy across filesystems)."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
