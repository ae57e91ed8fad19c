"""Size-capped logs of what a guest prints (its serial console, a container's output): whatever
it prints must not fill the host's disk (docs/security.md; the limits: docs/vm.md, docs/oci.md).

A :class:`CappedLog` appends to ``PATH``; a write that would take it past ``max_bytes`` first
renames ``PATH`` to ``PATH.1`` (replacing the previous one) and starts a fresh ``PATH``, so at
most ``2 * max_bytes`` are ever on disk. :func:`read_capped` returns both parts, oldest first.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from types import TracebackType


def rotated_path(path: Path) -> Path:
    return path.with_name(path.name + ".1")


class CappedLog:
    """An append-only log of at most ``max_bytes`` per file, two files at most (``PATH``, ``PATH.1``).

    ``fresh=True`` starts empty (a new boot's console); otherwise it appends to what is there.
    Every write reaches the file at once (readers tail it while it grows).
    """

    def __init__(self, path: Path, max_bytes: int, *, fresh: bool = False) -> None:
        if max_bytes < 1:
            raise ValueError("a log needs a positive size limit")
        self.path = path
        self.max_bytes = max_bytes
        if fresh:
            rotated_path(path).unlink(missing_ok=True)
        self._file = open(path, "wb" if fresh else "ab", buffering=0)  # noqa: SIM115 - closed in close()
        self._size = self._file.seek(0, os.SEEK_END)

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            room = self.max_bytes - self._size
            if room <= 0:
                self._rotate()
                continue
            n = self._file.write(view[:room]) or 0
            self._size += n
            view = view[n:]

    def _rotate(self) -> None:
        self._file.close()
        os.replace(self.path, rotated_path(self.path))
        self._file = open(self.path, "wb", buffering=0)  # noqa: SIM115 - closed in close()
        self._size = 0

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> CappedLog:
        return self

    def __exit__(self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


def read_capped(path: Path) -> bytes:
    """What a :class:`CappedLog` at ``path`` holds, oldest first (b"" when there is none)."""
    out = b""
    for part in (rotated_path(path), path):
        with contextlib.suppress(FileNotFoundError):
            out += part.read_bytes()
    return out
