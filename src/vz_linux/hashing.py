"""The one hashing helper: streaming sha256 of files and bytes, and cache keys."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path

_CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def sha256_fd(fd: int) -> str:
    """sha256 of everything an open file holds, read with ``pread``: the descriptor's offset (which a
    child process may share) is left alone."""
    h = hashlib.sha256()
    offset = 0
    while chunk := os.pread(fd, _CHUNK, offset):
        h.update(chunk)
        offset += len(chunk)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_text(text: str) -> str:
    return sha256_bytes(text.encode())


def cache_key(parts: Mapping[str, object]) -> str:
    """The cache key over ``parts`` (JSON-serialisable, order-independent): every build cache
    (kernel, kconfig memo, agent, crun) keys its entries this way."""
    return sha256_text(json.dumps(parts, sort_keys=True))


def tree_stamp(root: Path, *, exclude: frozenset[str] = frozenset()) -> str:
    """A digest of everything below ``root`` as it is on disk, without reading file contents: every
    entry's path, type, mode, owner, size, inode, mtime and ctime (and a symlink's target). Any
    write, chmod, rename or replacement below ``root`` changes ctime or the inode, so the stamp
    changes; ``exclude`` names top-level entries left out (e.g. the file the stamp is kept in)."""
    h = hashlib.sha256()
    todo = [(root, "")]
    while todo:
        directory, rel = todo.pop()
        with os.scandir(directory) as it:
            entries = sorted(it, key=lambda e: e.name)
        for entry in entries:
            if not rel and entry.name in exclude:
                continue
            path = f"{rel}/{entry.name}" if rel else entry.name
            st = entry.stat(follow_symlinks=False)
            link = os.readlink(entry.path) if entry.is_symlink() else ""
            h.update(json.dumps([path, st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_ino,
                                 st.st_mtime_ns, st.st_ctime_ns, link]).encode() + b"\n")
            if entry.is_dir(follow_symlinks=False):
                todo.append((Path(entry.path), path))
    return h.hexdigest()
