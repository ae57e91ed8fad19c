"""A reproducible newc ("070701") cpio writer, gzip-compressed, for the initramfs.

Why our own: GNU cpio takes owners, mtimes and order from the build machine; the kernel's
``gen_init_cpio`` is not on the host. Here every entry is declared as data, written in a fixed
order (sorted by path components, so a directory always precedes its contents) with uid/gid 0,
one mtime for all (``SOURCE_DATE_EPOCH`` or a fixed constant) and inode numbers assigned in that
order; gzip is written with mtime 0 and no file name. Same inputs, same bytes.
"""

from __future__ import annotations

import enum
import gzip
import os
import stat
from dataclasses import dataclass, field

from ..errors import BuildError

# 2024-01-01T00:00:00Z: used when SOURCE_DATE_EPOCH is unset, so builds never depend on the clock.
DEFAULT_EPOCH = 1_704_067_200
_MAGIC = b"070701"
_TRAILER = "TRAILER!!!"


class EntryKind(enum.Enum):
    FILE = stat.S_IFREG
    DIR = stat.S_IFDIR
    SYMLINK = stat.S_IFLNK
    CHAR_DEVICE = stat.S_IFCHR


@dataclass(frozen=True)
class Entry:
    """One archive member. ``data`` is the file's content or the symlink's target."""

    path: str  # relative, "/"-separated, no leading slash
    kind: EntryKind
    mode: int  # permission bits only
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)  # (major, minor) of a device node

    def __post_init__(self) -> None:
        parts = self.path.split("/")
        if not self.path or self.path.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise BuildError(f"bad initramfs path {self.path!r}: must be relative, without . or ..")
        if self.mode & ~0o7777:
            raise BuildError(f"{self.path}: mode {self.mode:o} has bits beyond permissions")
        if self.kind in (EntryKind.DIR, EntryKind.CHAR_DEVICE) and self.data:
            raise BuildError(f"{self.path}: a {self.kind.name.lower()} has no content")

    @property
    def sort_key(self) -> tuple[str, ...]:
        return tuple(self.path.split("/"))


@dataclass
class Archive:
    """A set of entries keyed by path; adding a path twice is an error (not a silent override)."""

    entries: dict[str, Entry] = field(default_factory=dict)

    def add(self, entry: Entry) -> None:
        if entry.path in self.entries:
            raise BuildError(f"initramfs path {entry.path!r} added twice")
        self.entries[entry.path] = entry

    def add_dir(self, path: str, mode: int = 0o755) -> None:
        self.add(Entry(path, EntryKind.DIR, mode))

    def add_file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        self.add(Entry(path, EntryKind.FILE, mode, data))

    def add_symlink(self, path: str, target: str) -> None:
        self.add(Entry(path, EntryKind.SYMLINK, 0o777, target.encode()))

    def add_char_device(self, path: str, major: int, minor: int, mode: int = 0o600) -> None:
        self.add(Entry(path, EntryKind.CHAR_DEVICE, mode, rdev=(major, minor)))

    def missing_parents(self) -> list[str]:
        """Parent directories that no entry declares (the kernel would refuse their children)."""
        missing = set()
        for path in self.entries:
            parts = path.split("/")
            for i in range(1, len(parts)):
                parent = "/".join(parts[:i])
                entry = self.entries.get(parent)
                if entry is None or entry.kind is not EntryKind.DIR:
                    missing.add(parent)
        return sorted(missing)

    def to_cpio(self, mtime: int | None = None) -> bytes:
        """The uncompressed newc archive."""
        missing = self.missing_parents()
        if missing:
            raise BuildError(f"initramfs lacks parent directories: {', '.join(missing)}")
        when = source_date_epoch() if mtime is None else mtime
        out = bytearray()
        for ino, entry in enumerate(sorted(self.entries.values(), key=lambda e: e.sort_key), start=1):
            nlink = 2 if entry.kind is EntryKind.DIR else 1
            out += _member(entry.path, entry.kind.value | entry.mode, ino, nlink, when, entry.data, entry.rdev)
        out += _member(_TRAILER, 0, 0, 1, 0, b"", (0, 0))
        # Pad to a 512-byte block like GNU cpio, so concatenating archives stays aligned.
        out += b"\0" * (-len(out) % 512)
        return bytes(out)

    def to_gzip(self, mtime: int | None = None) -> bytes:
        """The archive gzip-compressed (level 9, header mtime 0, no name): what the kernel unpacks."""
        return gzip.compress(self.to_cpio(mtime), compresslevel=9, mtime=0)


def source_date_epoch() -> int:
    raw = os.environ.get("SOURCE_DATE_EPOCH")
    if raw is None or raw == "":
        return DEFAULT_EPOCH
    try:
        value = int(raw)
    except ValueError:
        raise BuildError(f"SOURCE_DATE_EPOCH={raw!r} is not an integer number of seconds") from None
    if not 0 <= value <= 0xFFFFFFFF:
        raise BuildError(f"SOURCE_DATE_EPOCH={raw} is outside what newc can store (0..2^32-1)")
    return value


def _member(name: str, mode: int, ino: int, nlink: int, mtime: int, data: bytes,
            rdev: tuple[int, int]) -> bytes:
    encoded = name.encode() + b"\0"
    fields = (ino, mode, 0, 0, nlink, mtime, len(data), 0, 0, rdev[0], rdev[1], len(encoded), 0)
    header = _MAGIC + b"".join(b"%08X" % f for f in fields)
    head = header + encoded
    head += b"\0" * (-len(head) % 4)
    return head + data + b"\0" * (-len(data) % 4)
