"""Filesystem helpers shared by every stage: the one way to publish a file or a directory.

Everything that other processes may read while we write it is staged beside its destination
(same filesystem) and renamed into place, so a reader sees the whole old thing or the whole new
thing, never half of one:

* :func:`write_atomic` / :func:`publish_file` for one file;
* :func:`publish_dir` for a directory: a content-addressed cache entry (first writer wins) or a
  directory that replaces the previous one (:func:`swap_in`, atomic with ``RENAME_EXCHANGE``).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
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


@contextlib.contextmanager
def publish_file(dest: Path, *, mode: int = 0o644) -> Iterator[Path]:
    """Yield a temporary path beside ``dest``; when the block succeeds it is fsynced, given ``mode``
    and renamed over ``dest``. On an exception it is removed and ``dest`` is untouched."""
    fd, name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
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
    removed on failure. ``prefix`` names the stage (default ``.<dest name>.stage-``) so a caller's
    crash recovery can find leftovers.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=prefix or f".{dest.name}.stage-", dir=dest.parent))
    try:
        os.chmod(stage, 0o755)  # mkdtemp makes it 0700
        yield stage
        fsync_dir(stage)
        if replace:
            swap_in(stage, dest)  # afterwards `stage` holds the previous content, if any
        else:
            try:
                os.rename(stage, dest)
            except OSError as e:
                if e.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
        fsync_dir(dest.parent)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


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
