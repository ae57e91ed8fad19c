"""Filesystem helpers shared by every stage: the one way to publish a file or a directory.

Everything that other processes may read while we write it is staged beside its destination
(same filesystem) and renamed into place, so a reader sees the whole old thing or the whole new
thing, never half of one:

* :func:`write_atomic` / :func:`publish_file` for one file;
* :func:`publish_dir` for a directory: a content-addressed cache entry (first writer wins) or a
  directory that replaces the previous one (:func:`swap_in`, atomic with ``RENAME_EXCHANGE``).

Every temporary file or directory is *owned* (:func:`owned_tempfile`, :func:`owned_tempdir`): it
holds an ``flock`` for as long as its writer lives, and the kernel drops that lock when the writer
dies, even by SIGKILL. Making a new one first removes the stale siblings of the same prefix: ours
(same uid), not symlinks, and unlocked, i.e. left by a writer that is gone (docs/security.md,
"Crash leftovers"). Nothing else in the parent is ever touched.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from .errors import InstallError
from .run import libc

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --- owned temporaries: flock'ed while their writer lives, swept once it is gone ------------------
# fcntl.flock on the object's own fd rather than filelock: filelock locks a separate lock file by
# path, and a lock file beside each temporary would itself be a leftover with the same race.
def _open_nofollow(path: Path, directory: bool) -> int:
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | (os.O_DIRECTORY if directory else 0)
    return os.open(path, flags)


def _lock_if_stale(path: Path, directory: bool) -> int | None:
    """An fd holding ``path``'s lock if it is stale (ours, the right type, nobody holds its lock)."""
    try:
        st = path.lstat()
        kind_ok = stat.S_ISDIR(st.st_mode) if directory else stat.S_ISREG(st.st_mode)
        if st.st_uid != os.geteuid() or not kind_ok:
            return None
        fd = _open_nofollow(path, directory)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None  # its writer is alive
    return fd


def sweep_stale(parent: Path, prefix: str, *, suffix: str = "", directory: bool = True) -> list[Path]:
    """Remove the stale temporaries ``parent/<prefix>*<suffix>`` (see the module doc); return them."""
    removed: list[Path] = []
    try:
        entries = [e for e in parent.iterdir() if e.name.startswith(prefix) and e.name.endswith(suffix)]
    except OSError:
        return removed
    for entry in entries:
        fd = _lock_if_stale(entry, directory)
        if fd is None:
            continue
        try:  # removed while we hold its lock: a writer that just made it waits, then sees it gone
            if directory:
                shutil.rmtree(entry, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    entry.unlink()
            removed.append(entry)
        finally:
            os.close(fd)
    return removed


def _owned(parent: Path, make: Callable[[], str], directory: bool) -> tuple[Path, int]:
    """Make a temporary and lock it; if a sweeper removed it before we locked it, make another."""
    while True:
        path = Path(make())
        fd = _open_nofollow(path, directory)
        fcntl.flock(fd, fcntl.LOCK_EX)
        if os.fstat(fd).st_nlink > 0:
            return path, fd
        os.close(fd)


@contextlib.contextmanager
def owned_tempdir(parent: Path, prefix: str) -> Iterator[Path]:
    """A new directory ``parent/<prefix><random>`` (mode 0700), locked for the life of the block and
    removed after it (unless renamed away); stale siblings with the same prefix are removed first."""
    parent.mkdir(parents=True, exist_ok=True)
    sweep_stale(parent, prefix)
    path, fd = _owned(parent, lambda: tempfile.mkdtemp(prefix=prefix, dir=parent), directory=True)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        os.close(fd)


@contextlib.contextmanager
def owned_tempfile(parent: Path, prefix: str, suffix: str = ".tmp") -> Iterator[Path]:
    """A new empty file ``parent/<prefix><random><suffix>``, locked for the life of the block and
    removed after it (unless renamed away); stale siblings of the same name pattern are removed first."""
    sweep_stale(parent, prefix, suffix=suffix, directory=False)

    def make() -> str:
        fd, name = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=parent)
        os.close(fd)
        return name

    path, fd = _owned(parent, make, directory=False)
    try:
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        os.close(fd)


@contextlib.contextmanager
def publish_file(dest: Path, *, mode: int = 0o644) -> Iterator[Path]:
    """Yield a temporary path beside ``dest``; when the block succeeds it is fsynced, given ``mode``
    and renamed over ``dest``. On an exception it is removed and ``dest`` is untouched."""
    with owned_tempfile(dest.parent, f".{dest.name}.") as tmp:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, dest)
    fsync_dir(dest.parent)


def write_atomic(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    with publish_file(path, mode=mode) as tmp:
        tmp.write_bytes(data)


def write_text_if_changed(path: Path, text: str) -> bool:
    """Atomically write ``text`` unless ``path`` already holds it (unchanged files keep their mtime)."""
    if path.is_file() and path.read_text() == text:
        return False
    write_atomic(path, text.encode())
    return True


@contextlib.contextmanager
def publish_dir(dest: Path, *, replace: bool = False, prefix: str | None = None) -> Iterator[Path]:
    """Yield an empty staging directory beside ``dest``; when the block succeeds it becomes ``dest``.

    ``replace=False`` (content-addressed caches): if another process published ``dest`` first,
    ours is discarded; the two are equivalent by construction. ``replace=True``: ``dest`` is
    replaced atomically (:func:`swap_in`) and the previous content deleted. The stage is always
    removed on failure. ``prefix`` names the stage (default ``.<dest name>.stage-``): stale stages
    with that prefix, left by a writer that died, are removed first (:func:`owned_tempdir`), so a
    cache gives all its stages one prefix.
    """
    with owned_tempdir(dest.parent, prefix or f".{dest.name}.stage-") as stage:
        os.chmod(stage, 0o755)  # mkdtemp makes it 0700
        yield stage
        fsync_dir(stage)
        if replace:
            swap_in(stage, dest)  # afterwards `stage` holds the previous content, deleted on exit
        else:
            try:
                os.rename(stage, dest)
            except OSError as e:
                if e.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
        fsync_dir(dest.parent)


def _exchange(a: Path, b: Path) -> None:
    """Atomically swap two directory entries (Linux renameat2 RENAME_EXCHANGE)."""
    rc = libc().renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if rc != 0:
        import ctypes

        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(a))


def swap_in(stage: Path, dest: Path) -> None:
    """Atomically make directory ``stage`` the ``dest``; the previous ``dest`` (if any) ends up at ``stage``.

    Where the filesystem has no ``RENAME_EXCHANGE`` it falls back to two renames through
    ``<stage>`` with ``.install-`` replaced by ``.old-``; ``bundle.install`` repairs the gap
    after a crash. The caller deletes ``stage`` afterwards and fsyncs the parent.
    """
    if dest.is_symlink() or (dest.exists() and not dest.is_dir()):
        raise InstallError(f"{dest} exists and is not a directory", hint="remove it or choose another directory")
    if not dest.exists():
        os.rename(stage, dest)
        return
    try:
        _exchange(stage, dest)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise
        # Through "<...>.old-<...>": bundle.install's crash recovery finds it under that name.
        old_name = (stage.name.replace(".install-", ".old-") if ".install-" in stage.name
                    else f".{dest.name}.old-{stage.name.lstrip('.')}")
        old = stage.with_name(old_name)
        os.rename(dest, old)
        os.rename(stage, dest)
        os.rename(old, stage)
