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
