"""``vz oci inspect`` (a container's record and runtime config as JSON) and ``vz oci logs -f``.

Following reads ``stdout.log``/``stderr.log`` as they grow — across a rotation to ``.1`` (the open
file is read to its end before the new one is opened: docs/oci.md, "Logs") — and ends once the
container is no longer live and everything written before that has been relayed.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import Any, BinaryIO

from ..errors import ContainerStateError
from .config import RuntimeConfig
from .container import Sink, store_for
from .state import CONFIG_FILE, LIVE, STDERR_LOG, STDOUT_LOG

_CONFIG_LIMIT = 1 << 20


def inspect(cfg: RuntimeConfig, ref: str) -> dict[str, Any]:
    """The container's record (with its effective status) and its runtime ``config.json``."""
    store = store_for(cfg)
    state = store.find(ref)
    d = store.dir(state.id)
    record = state.to_json()
    record["status"] = store.effective_status(state).value
    record["dir"] = str(d)
    record["supervisor_alive"] = store.supervisor_alive(state)
    try:
        with open(d / CONFIG_FILE, "rb") as f:
            config = json.loads(f.read(_CONFIG_LIMIT))
    except (OSError, ValueError) as e:
        raise ContainerStateError(f"cannot read {d / CONFIG_FILE}: {e}", hint=f"remove {d}") from None
    return {"id": state.id, "name": state.name, "state": record, "config": config}


class _Follower:
    """One log file read as it grows, following a rotation (same inode renamed to ``.1``)."""

    def __init__(self, path: Path, sink: Sink) -> None:
        self.path = path
        self.sink = sink
        self.file: BinaryIO | None = None
        rotated = path.with_name(path.name + ".1")
        with contextlib.suppress(FileNotFoundError), open(rotated, "rb") as old:  # the older part first
            for chunk in iter(lambda: old.read(1 << 16), b""):
                sink(chunk)

    def pump(self) -> None:
        if self.file is None:
            try:
                self.file = open(self.path, "rb")  # noqa: SIM115 - closed in close()
            except FileNotFoundError:
                return
        while chunk := self.file.read(1 << 16):
            self.sink(chunk)
        with contextlib.suppress(FileNotFoundError):
            if os.stat(self.path).st_ino != os.fstat(self.file.fileno()).st_ino:  # rotated meanwhile
                self.file.close()
                self.file = None
                self.pump()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


def follow_logs(cfg: RuntimeConfig, ref: str, on_stdout: Sink, on_stderr: Sink, poll: float = 0.2) -> None:
    """Relay the container's output as it is written, until it is no longer live."""
    store = store_for(cfg)
    state = store.find(ref)
    d = store.dir(state.id)
    followers = [_Follower(d / STDOUT_LOG, on_stdout), _Follower(d / STDERR_LOG, on_stderr)]
    try:
        while True:
            # Status first: the logs are complete once it is final (written before it is recorded).
            done = store.effective_status(store.read(state.id)) not in LIVE
            for f in followers:
                f.pump()
            if done:
                return
            time.sleep(poll)
    finally:
        for f in followers:
            f.close()
