"""``vz oci cp``: files and trees between the host and a container, as a tar stream.

Host → container: :func:`write_tar` archives the host path (regular files, directories and
symlinks as symlinks; hard links become separate files; devices, FIFOs and sockets are skipped with
a warning) and checks every name it emits. The supervisor feeds it to ``vz-agent --in-root …
--extract`` (:mod:`.transfer`, guest/agent/files.c), which resolves every path inside the
container's root.

Container → host: the tar comes from the guest and is **hostile** (docs/security.md). :class:`TarReader`
is a small ustar/GNU reader of our own (not :mod:`tarfile`, whose PAX handling reads headers of any
size into memory) that accepts only regular files, directories and symlinks with relative names
without ``..``, all under one top-level entry, within count and size bounds. :class:`Extractor`
writes them into a private staging directory beside the destination, opening every directory with
``O_NOFOLLOW`` from the staging root — a symlink member is created as a symlink and never followed
— and only a complete, valid archive is renamed into place.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import socket
import stat
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import CopyHostPathError, HostileArchiveError, OciError
from ..fsutil import fsync_dir, owned_tempdir
from . import supervisor, wire
from .config import RuntimeConfig
from .container import store_for
from .state import LIVE

BLOCK = 512
NAME_LIMIT = 4096
DEPTH_LIMIT = 128
DEFAULT_MAX_BYTES = 16 << 30  # bytes of file data accepted from a guest
DEFAULT_MAX_MEMBERS = 1_000_000
_MTIME_MAX = 1 << 40  # seconds: far future, still a valid time_t for utime()
_TYPES = {b"0": "file", b"\0": "file", b"7": "file", b"5": "dir", b"2": "symlink"}
Warn = Callable[[str], None]


@dataclass(frozen=True)
class Spec:
    """One side of ``cp``: a host path, or ``CONTAINER:PATH``."""

    container: str | None
    path: str

    @classmethod
    def parse(cls, arg: str) -> Spec:
        # Docker's rule: a path that starts with / or . is local even when it holds a colon.
        if arg.startswith(("/", ".")) or ":" not in arg:
            return cls(None, arg)
        name, _, path = arg.partition(":")
        if not name or not path:
            raise CopyHostPathError(f"{arg!r}: expected CONTAINER:PATH")
        return cls(name, path)


def check_name(name: str) -> list[str]:
    """A member name's components, or HostileArchiveError: relative, no ``..``, no empty name."""
    if not name or name.startswith("/") or "\0" in name or len(os.fsencode(name)) > NAME_LIMIT:
        raise HostileArchiveError(f"tar member {name[:200]!r}: an absolute, empty or overlong name")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        raise HostileArchiveError(f"tar member {name[:200]!r}: a name with '..' or no name")
    if len(parts) > DEPTH_LIMIT:
        raise HostileArchiveError(f"tar member {name[:200]!r}: deeper than {DEPTH_LIMIT} levels")
    return parts


# --- host → container ----------------------------------------------------------------------------
def _header(name: str, kind: bytes, st: os.stat_result, size: int = 0, link: str = "") -> bytes:
    check_name(name)
    info = tarfile.TarInfo(name)
    info.type, info.size, info.linkname = kind, size, link
    info.mode, info.mtime = stat.S_IMODE(st.st_mode), max(0, int(st.st_mtime))
    return info.tobuf(format=tarfile.GNU_FORMAT)


def _file_blocks(path: Path, name: str, st: os.stat_result) -> Iterator[bytes]:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        yield _header(name, tarfile.REGTYPE, st, st.st_size)
        left = st.st_size
        while left:  # a file that shrinks meanwhile is padded, one that grows is cut
            data = f.read(min(left, 1 << 20)) or bytes(min(left, 1 << 20))
            left -= len(data)
            yield data
        yield bytes(-st.st_size % BLOCK)


def write_tar(path: Path, top: str, warn: Warn) -> Iterator[bytes]:
    """The tar of ``path`` (not followed if it is a symlink) with ``top`` as its top-level name."""
    stack: list[tuple[Path, str, int]] = [(path, top, 0)]
    while stack:
        p, name, depth = stack.pop()
        st = os.lstat(p)
        if stat.S_ISREG(st.st_mode):
            yield from _file_blocks(p, name, st)
        elif stat.S_ISLNK(st.st_mode):
            yield _header(name, tarfile.SYMTYPE, st, link=os.readlink(p))
        elif stat.S_ISDIR(st.st_mode) and depth < DEPTH_LIMIT:
            yield _header(name, tarfile.DIRTYPE, st)
            entries = sorted(os.listdir(p), reverse=True)
            stack.extend((p / e, f"{name}/{e}", depth + 1) for e in entries)
        else:
            warn(f"{p}: skipped (not a regular file, directory or symlink, or too deep)")
    yield bytes(2 * BLOCK)


# --- container → host: the hostile side ------------------------------------------------------------
@dataclass(frozen=True)
class Member:
    name: str
    parts: tuple[str, ...]
    kind: str  # file | dir | symlink
    size: int
    mode: int
    mtime: int
    link: str


def _number(field: bytes, what: str) -> int:
    if field[:1] and field[0] & 0x80:  # base-256
        return int.from_bytes(field[1:], "big")
    text = field.split(b"\0", 1)[0].strip(b" ")
    try:
        return int(text or b"0", 8)
    except ValueError:
        raise HostileArchiveError(f"tar header: {what} is not a number") from None


def _text(field: bytes) -> str:
    raw = field.split(b"\0", 1)[0]
    try:
        return raw.decode("utf-8", errors="surrogateescape")
    except UnicodeDecodeError:  # pragma: no cover - surrogateescape decodes any bytes
        raise HostileArchiveError("tar header: undecodable name") from None


class TarReader:
    """Members of a tar stream read through ``read(n)`` (exactly n bytes, b"" only at its end)."""

    def __init__(self, read: Callable[[int], bytes], *, max_bytes: int = DEFAULT_MAX_BYTES,
                 max_members: int = DEFAULT_MAX_MEMBERS) -> None:
        self._read = read
        self.max_bytes = max_bytes
        self.max_members = max_members
        self.total = 0
        self.count = 0

    def block(self) -> bytes:
        b = self._read(BLOCK)
        if len(b) != BLOCK:
            raise HostileArchiveError("the tar stream from the guest ended in the middle of a member")
        return b

    def data(self, size: int) -> Iterator[bytes]:
        """A member's data in pieces, its padding consumed."""
        left = size
        while left:
            n = min(left, 1 << 20)
            chunk = self._read(-(-n // BLOCK) * BLOCK)
            if len(chunk) < n:
                raise HostileArchiveError("the tar stream from the guest ended in a file's data")
            left -= n
            yield chunk[:n]

    def _long(self, size: int) -> str:
        if size > NAME_LIMIT:
            raise HostileArchiveError(f"tar long-name record of {size} bytes (limit {NAME_LIMIT})")
        return _text(b"".join(self.data(size)))

    def __iter__(self) -> Iterator[Member]:
        long_name = long_link = None
        while True:
            h = self.block()
            if h == bytes(BLOCK):
                return
            checksum = _number(h[148:156], "checksum")
            if checksum != sum(h[:148]) + 8 * 32 + sum(h[156:]):
                raise HostileArchiveError("tar header checksum mismatch")
            kind, size = h[156:157], _number(h[124:136], "size")
            if kind in (b"L", b"K"):
                value = self._long(size)
                long_name, long_link = (value, long_link) if kind == b"L" else (long_name, value)
                continue
            yield self._member(h, kind, size, long_name, long_link)
            long_name = long_link = None

    def _member(self, h: bytes, kind: bytes, size: int, long_name: str | None, long_link: str | None) -> Member:
        name = long_name or _text(h[0:100])
        if long_name is None and h[257:263] == b"ustar\0" and h[345]:  # POSIX ustar's name prefix
            name = f"{_text(h[345:500])}/{name}"
        if kind not in _TYPES:
            raise HostileArchiveError(f"tar member {name[:200]!r}: type {kind!r} refused "
                                      "(only files, directories and symlinks are copied)")
        parts = check_name(name)
        self.count += 1
        self.total += size if _TYPES[kind] == "file" else 0
        if self.count > self.max_members or self.total > self.max_bytes:
            raise HostileArchiveError(f"the tar from the guest is over its bounds ({self.max_members} "
                                      f"members, {self.max_bytes} bytes)")
        link = long_link if long_link is not None else _text(h[157:257])
        if len(os.fsencode(link)) > NAME_LIMIT or (_TYPES[kind] == "symlink" and not link):
            raise HostileArchiveError(f"tar member {name[:200]!r}: an empty or overlong link target")
        return Member(name, tuple(parts), _TYPES[kind], size if _TYPES[kind] == "file" else 0,
                      _number(h[100:108], "mode") & 0o777, min(_number(h[136:148], "mtime"), _MTIME_MAX), link)


class Extractor:
    """Writes members under ``stage`` (an empty private directory), never through a symlink."""

    def __init__(self, stage: Path) -> None:
        self.stage = stage
        self.top: str | None = None
        self.top_kind: str | None = None
        self._dirs: list[tuple[tuple[str, ...], int]] = []

    @contextlib.contextmanager
    def _parent(self, parts: tuple[str, ...]) -> Iterator[int]:
        fd = os.open(self.stage, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            for part in parts[:-1]:
                try:
                    nfd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
                except OSError as e:  # ELOOP/ENOTDIR: through a symlink or a file; ENOENT: no dir entry first
                    raise HostileArchiveError(f"tar member {'/'.join(parts)[:200]!r}: its directory "
                                              f"{part!r} is not a directory from this archive ({e.strerror})") from None
                os.close(fd)
                fd = nfd
            yield fd
        finally:
            os.close(fd)

    def add(self, m: Member, data: Iterator[bytes]) -> None:
        if self.top is None:
            self.top, self.top_kind = m.parts[0], m.kind
            if len(m.parts) != 1:
                raise HostileArchiveError(f"tar member {m.name[:200]!r} comes before its top-level entry")
        elif m.parts[0] != self.top or len(m.parts) == 1:
            raise HostileArchiveError(f"tar member {m.name[:200]!r} is outside the archive's one top-level "
                                      f"entry {self.top!r}")
        with self._parent(m.parts) as dfd:
            leaf = m.parts[-1]
            try:
                if m.kind == "dir":
                    os.mkdir(leaf, 0o700, dir_fd=dfd)
                    self._dirs.append((m.parts, m.mode | 0o700))
                elif m.kind == "symlink":
                    os.symlink(m.link, leaf, dir_fd=dfd)
                else:
                    self._write(dfd, leaf, m, data)
            except FileExistsError:
                raise HostileArchiveError(f"tar member {m.name[:200]!r} appears twice") from None
            except OSError as e:  # the host's own trouble (disk full, permissions), not the archive's
                raise CopyHostPathError(f"cannot write {m.name[:200]!r} under {self.stage}: {e.strerror}") from None

    @staticmethod
    def _write(dfd: int, leaf: str, m: Member, data: Iterator[bytes]) -> None:
        fd = os.open(leaf, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dfd)
        with os.fdopen(fd, "wb") as f:
            for chunk in data:
                f.write(chunk)
            os.fchmod(f.fileno(), m.mode)
            os.utime(f.fileno(), (m.mtime, m.mtime))

    def finish(self) -> None:
        """Directory modes last (a read-only directory must still receive its entries)."""
        if self.top is None:
            raise HostileArchiveError("the tar from the guest is empty")
        for parts, mode in reversed(self._dirs):
            with self._parent((*parts, "")) as fd:
                os.chmod(fd, mode)


def receive_tar(read: Callable[[int], bytes], stage: Path, **bounds: int) -> tuple[str, str]:
    """Extract a hostile tar stream into ``stage``; its top-level name and kind."""
    reader = TarReader(read, **bounds)
    ex = Extractor(stage)
    for m in reader:
        ex.add(m, reader.data(m.size))
    ex.finish()
    assert ex.top is not None and ex.top_kind is not None
    return ex.top, ex.top_kind


def publish(stage: Path, top: str, kind: str, target: Path) -> None:
    """Rename the extracted entry into place: a new name, or over a file/symlink; never over a dir."""
    if target.is_dir() and not target.is_symlink():
        raise CopyHostPathError(f"{target} exists and is a directory: not merged",
                                hint="remove it, or copy into another directory")
    if kind == "dir" and (target.exists() or target.is_symlink()):
        raise CopyHostPathError(f"{target} exists: a directory is not copied over it")
    os.replace(stage / top, target)
    fsync_dir(target.parent)


# --- the two directions, through the container's supervisor ---------------------------------------------
def _connect(cfg: RuntimeConfig, ref: str) -> tuple[socket.socket, str]:
    store = store_for(cfg)
    state = store.find(ref)
    if store.effective_status(state) not in LIVE:
        raise OciError(f"container {state.name} is {store.effective_status(state).value}: its files lived "
                       "in its VM, which is gone", hint="cp works while a container is created or running")
    return supervisor.connect(store.dir(state.id)), state.name


def _reply(reader: wire.Reader) -> dict[str, Any]:
    reply = reader.json()
    if reply is None:
        raise OciError("the container's supervisor closed the connection during cp")
    if not reply.get("ok"):
        err = OciError(str(reply.get("error")))
        err.exit_code = int(str(reply.get("exit_code") or OciError.exit_code))
        raise err
    return reply


def copy_in(cfg: RuntimeConfig, source: Path, ref: str, dest: str, warn: Warn) -> None:
    if not source.exists() and not source.is_symlink():
        raise CopyHostPathError(f"{source}: no such file or directory")
    top = Path(os.path.normpath(os.path.abspath(source))).name or "root"
    sock, _ = _connect(cfg, ref)
    with sock:
        reader = wire.Reader(sock)
        wire.send_json(sock, {"op": "copy_in", "path": _container_path(dest)})
        try:
            for data in write_tar(source, top, warn):
                wire.send_chunk(sock, data)
            wire.send_end(sock)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the supervisor gave up: its reply says why
        except OSError as e:
            raise CopyHostPathError(f"{source}: {e.strerror}") from None
        _reply(reader)


def _container_path(path: str) -> str:
    """Lexically cleaned (``..`` cannot climb above /), keeping a trailing / ("must be a directory")."""
    cleaned = posixpath.normpath("/" + path)
    return cleaned + "/" if path.endswith("/") and cleaned != "/" else cleaned


def _target(dest: Path, top: str) -> Path:
    if dest.is_dir() and not dest.is_symlink():
        return dest / top
    if not dest.parent.is_dir():
        raise CopyHostPathError(f"{dest.parent}: no such directory")
    return dest


def copy_out(cfg: RuntimeConfig, ref: str, src: str, dest: Path, warn: Warn, **bounds: int) -> Path:
    path = _container_path(src).rstrip("/") or "/"
    name = posixpath.basename(path) or "root"
    target = _target(dest, name)
    if target.is_dir() and not target.is_symlink():  # checked again when publishing; fail before the copy
        raise CopyHostPathError(f"{target} exists and is a directory: not merged",
                                hint="remove it, or copy into another directory")
    sock, _ = _connect(cfg, ref)
    with sock, owned_tempdir(target.parent, ".vz-cp-") as stage:
        reader = wire.Reader(sock)
        wire.send_json(sock, {"op": "copy_out", "path": path})
        _reply(reader)
        stream = _ChunkStream(reader)
        try:
            top, kind = receive_tar(stream.read, stage, **bounds)
        except HostileArchiveError:
            if stream.ended:  # a short stream the guest explains by its own failure: report that
                _reply(reader)
            raise
        stream.drain()
        for w in _reply(reader).get("warnings") or []:
            warn(str(w))
        publish(stage, top, kind, target)
    return target


class _ChunkStream:
    """``read(n)`` over the supervisor's chunks."""

    def __init__(self, reader: wire.Reader) -> None:
        self._reader = reader
        self._buf = bytearray()
        self.ended = False

    def read(self, n: int) -> bytes:
        while len(self._buf) < n and not self.ended:
            chunk = self._reader.chunk()
            if chunk:
                self._buf += chunk
            else:
                self.ended = True
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out

    def drain(self) -> None:
        """Read to the stream's end (tar's trailing zero blocks); anything else after the end is refused."""
        while not self.ended:
            self.read(1 << 20)
        if any(self._buf):
            raise HostileArchiveError("data after the end of the tar from the guest")
