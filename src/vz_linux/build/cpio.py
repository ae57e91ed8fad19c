"""A reproducible newc ("070701") cpio writer for the initramfs: uncompressed, gzip or lz4.

Why our own: GNU cpio takes owners, mtimes and order from the build machine; the kernel's
``gen_init_cpio`` is not on the host. Here every entry is declared as data, written in a fixed
order (sorted by path components, so a directory always precedes its contents) with uid/gid 0,
one mtime for all (``SOURCE_DATE_EPOCH`` or a fixed constant) and inode numbers assigned in that
order; gzip is written with mtime 0 and no file name, lz4 in the legacy frame the kernel reads
(``lz4 -l``, which has no header fields that vary). Same inputs, same bytes.

Uncompressed is the default (docs/guest.md, "Initramfs"): under TCG the kernel's inflate costs more
boot time than the larger image costs to load, and the image is read from the host's page cache.
"""

from __future__ import annotations

import enum
import gzip
import os
import stat
from dataclasses import dataclass, field

from ..errors import BuildError, InitramfsCompressionError
from ..run import run

# 2024-01-01T00:00:00Z: used when SOURCE_DATE_EPOCH is unset, so builds never depend on the clock.
DEFAULT_EPOCH = 1_704_067_200
_MAGIC = b"070701"
_TRAILER = "TRAILER!!!"


class EntryKind(enum.Enum):
    FILE = stat.S_IFREG
    DIR = stat.S_IFDIR
    SYMLINK = stat.S_IFLNK
    CHAR_DEVICE = stat.S_IFCHR


class Compression(enum.StrEnum):
    """How ``initramfs.img`` is compressed. The kernel needs the matching ``CONFIG_RD_*``."""

    none = "none"
    gzip = "gzip"
    lz4 = "lz4"

    @classmethod
    def parse(cls, name: str) -> Compression:
        try:
            return cls(name)
        except ValueError:
            raise InitramfsCompressionError(
                f"unknown initramfs compression {name!r}; valid: {', '.join(c.value for c in cls)}") from None

    @property
    def kconfig(self) -> str | None:
        """The kernel option that unpacks this compression (None: nothing to unpack)."""
        return {Compression.none: None, Compression.gzip: "RD_GZIP", Compression.lz4: "RD_LZ4"}[self]

    @classmethod
    def detect(cls, image: bytes) -> Compression:
        """Which compression an image was written with, by its magic bytes."""
        if image[:2] == _GZIP_MAGIC:
            return cls.gzip
        if image[:4] == _LZ4_LEGACY_MAGIC:
            return cls.lz4
        if image[:6] == _MAGIC:
            return cls.none
        raise InitramfsCompressionError("the initramfs is neither a newc archive nor gzip or lz4 (legacy) "
                                        "compressed")


_GZIP_MAGIC = b"\x1f\x8b"
_LZ4_LEGACY_MAGIC = b"\x02\x21\x4c\x18"


def compress(raw: bytes, compression: Compression) -> bytes:
    """``raw`` (a newc archive) compressed, reproducibly: same bytes in, same bytes out."""
    if compression is Compression.none:
        return raw
    if compression is Compression.gzip:
        return gzip.compress(raw, compresslevel=9, mtime=0)
    # Legacy frame (-l): what the kernel's unlz4 reads; -9: best ratio; no content size, no mtime.
    return run(["lz4", "-l", "-9", "-q", "-c"], input=raw).stdout


def decompress(image: bytes) -> bytes:
    """The newc archive inside an initramfs image written by :func:`compress`."""
    compression = Compression.detect(image)
    if compression is Compression.none:
        return image
    if compression is Compression.gzip:
        return gzip.decompress(image)
    return run(["lz4", "-d", "-q", "-c"], input=image).stdout


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
        """The archive gzip-compressed (level 9, header mtime 0, no name)."""
        return self.to_image(Compression.gzip, mtime)

    def to_image(self, compression: Compression, mtime: int | None = None) -> bytes:
        """The archive as an initramfs image with ``compression``."""
        return compress(self.to_cpio(mtime), compression)


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
