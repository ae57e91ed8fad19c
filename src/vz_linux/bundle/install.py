"""Atomic, concurrency-safe installs of a bundle into an install dir (docs/selection.md, "Installs").

How an install happens (under ``.<name>.lock``, a ``filelock`` flock beside the install dir):

1. every artifact is copied into a fresh temp dir *beside* the install dir (same filesystem),
   hashed while it is copied (so what was written is what was checked), fsynced;
   ``version.json`` (the source's exact bytes) and the install record follow; the dir is fsynced;
2. the temp dir is swapped with the install dir by :func:`vz_linux.fsutil.swap_in` (one
   ``renameat2(RENAME_EXCHANGE)``, or ``rename`` when there is no previous install), the parent
   dir is fsynced;
3. the old install, now at the temp name, is deleted.

A SIGKILL before step 2 leaves the previous install untouched (plus a stale temp dir the next
install removes); after it, the new install is complete. Where the filesystem has no
``RENAME_EXCHANGE``, ``swap_in`` renames the old install to the temp name with ``.install-``
replaced by ``.old-`` for a moment; :func:`_recover` puts it back after a crash there. Readers
never see a mixture: the install dir is replaced as a whole, and the fast check reads it through
one directory fd.

The fast "already installed and intact" check trusts the install record (``layout.INSTALL_RECORD``):
it compares the installed ``version.json`` with the record's hash, and every artifact's inode,
size, mtime and ctime with what was recorded right after the install hashed it. Any write,
truncate, chmod, rename-over or replace changes ctime or the inode, so ordinary corruption falls
back to a full re-hash; only someone able to reset ctime (i.e. change the clock as root) could
fool it. ``vz-linux verify`` never uses the record: it always re-hashes.

Fault injection: :data:`on_stage`, ``None`` in production, is called at the named points of an
install so a test can hold (and SIGKILL) an installer exactly there.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import filelock
from pydantic import BaseModel, ConfigDict, StrictInt, StrictStr, ValidationError

from .. import layout
from ..errors import ChecksumMismatchError, InstallError, InvalidMetadataError, MissingArtifactsError
from ..fsutil import fsync_dir, swap_in, sweep_stale, write_atomic
from ..hashing import sha256_bytes
from ..profiles import KernelCapability, KernelProfile
from .metadata import BundleMetadata
from .model import KernelBundle, bundle_from_metadata, check_regular, check_selection, validate_bundle

LOCK_TIMEOUT_S = 600.0
_CHUNK = 1 << 20

InstallStage = Literal["copying", "swapped"]
"""Where :data:`on_stage` is called: ``"copying"`` right after the first artifact is copied into the
temp dir (the previous install untouched); ``"swapped"`` right after the swap, before the old
install (now at the temp name) is deleted."""

on_stage: Callable[[InstallStage], None] | None = None
"""Fault-injection point for tests, ``None`` in production: called with each :data:`InstallStage`
an install reaches, under the install lock. ``tests/foundation/test_reliability.py`` sets it in an
installer subprocess to pause there and SIGKILL it (docs/selection.md)."""


class _Stamp(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    sha256: StrictStr
    size: StrictInt
    ino: StrictInt
    dev: StrictInt
    mtime_ns: StrictInt
    ctime_ns: StrictInt

    @classmethod
    def of(cls, st: os.stat_result, sha256: str) -> _Stamp:
        return cls(sha256=sha256, size=st.st_size, ino=st.st_ino, dev=st.st_dev,
                   mtime_ns=st.st_mtime_ns, ctime_ns=st.st_ctime_ns)

    def matches(self, st: os.stat_result) -> bool:
        return (self.size, self.ino, self.dev, self.mtime_ns, self.ctime_ns) == (
            st.st_size, st.st_ino, st.st_dev, st.st_mtime_ns, st.st_ctime_ns)


class InstallRecord(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    metadata_sha256: StrictStr
    source: StrictStr
    files: dict[str, _Stamp]


@dataclass(frozen=True)
class _Snapshot:
    """An installed bundle whose files match its install record (read through one dir fd)."""

    metadata: BundleMetadata
    metadata_sha256: str
    sizes: dict[str, int]


# --- the fast check ---------------------------------------------------------------------------
def _read_at(dir_fd: int, name: str) -> bytes:
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=dir_fd)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, f"{name} is not a regular file")
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read()
    finally:
        os.close(fd)


def _snapshot(install_dir: Path) -> _Snapshot | None:
    """The intact installed bundle per its record, or None (absent, no record, anything differs)."""
    try:
        dir_fd = os.open(install_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        meta_bytes = _read_at(dir_fd, layout.METADATA)
        record = InstallRecord.model_validate_json(_read_at(dir_fd, layout.INSTALL_RECORD))
        meta_sha = sha256_bytes(meta_bytes)
        if record.metadata_sha256 != meta_sha:
            return None
        metadata = BundleMetadata.parse_text(meta_bytes.decode(), str(install_dir / layout.METADATA))
        expected = metadata.artifact_checksums()
        if set(record.files) != set(expected):
            return None
        sizes: dict[str, int] = {}
        for name, sha in expected.items():
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            stamp = record.files[name]
            if not stat.S_ISREG(st.st_mode) or stamp.sha256 != sha or not stamp.matches(st):
                return None
            sizes[name] = st.st_size
        return _Snapshot(metadata, meta_sha, sizes)
    except (OSError, ValueError, UnicodeDecodeError, ValidationError, InvalidMetadataError):
        return None  # the slow path re-validates and reports the real problem
    finally:
        os.close(dir_fd)


# --- locking ------------------------------------------------------------------------------------
def _writable_parent(install_dir: Path) -> Path:
    parent = install_dir.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InstallError(
            f"cannot create install dir {parent}: {e.strerror or e}",
            hint="pass --install-dir (install_dir=) pointing at a writable directory",
        ) from None
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InstallError(
            f"install dir {parent} is not writable",
            hint="pass --install-dir (install_dir=) pointing at a writable directory",
        )
    return parent


@contextlib.contextmanager
def install_lock(install_dir: Path, timeout: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """Exclusive lock for installs into ``install_dir`` (released by the kernel if we die)."""
    parent = _writable_parent(install_dir)
    lock = filelock.FileLock(str(parent / f".{install_dir.name}.lock"), timeout=timeout)
    try:
        lock.acquire()
    except filelock.Timeout:
        raise InstallError(
            f"another install into {install_dir} has held its lock for {timeout:.0f}s",
            hint="wait for it to finish, or remove the stale process",
        ) from None
    except OSError as e:
        raise InstallError(
            f"cannot lock install dir {install_dir}: {e.strerror or e}",
            hint="pass --install-dir (install_dir=) pointing at a writable directory",
        ) from None
    try:
        yield
    finally:
        lock.release()


# --- the install ----------------------------------------------------------------------------------
def _reached(stage: InstallStage) -> None:
    if on_stage is not None:
        on_stage(stage)


def _copy_hashed(src_dir_fd: int, src: Path, dst: Path) -> str:
    """Copy ``src`` (opened relative to the source dir fd) to a new file ``dst``, mode kept, fsynced.

    Returns the sha256 of exactly the bytes written.
    """
    h = hashlib.sha256()
    try:
        sfd = os.open(src.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=src_dir_fd)
    except OSError as e:
        if e.errno == errno.ELOOP:
            check_regular(src)  # raises UnsafeBundleError with the right wording
        raise
    try:
        st = os.fstat(sfd)
        if not stat.S_ISREG(st.st_mode):
            check_regular(src)
        mode = stat.S_IMODE(st.st_mode) & 0o755 | 0o400
        dfd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
        try:
            while chunk := os.read(sfd, _CHUNK):
                h.update(chunk)
                view = memoryview(chunk)
                while view:
                    view = view[os.write(dfd, view):]
            os.fchmod(dfd, mode)
            os.fsync(dfd)
        finally:
            os.close(dfd)
    finally:
        os.close(sfd)
    return h.hexdigest()


def _write_new(path: Path, data: bytes) -> None:
    with open(path, "xb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(path, 0o644)


def _stale_prefixes(install_dir: Path) -> tuple[str, str]:
    return f".{install_dir.name}.install-", f".{install_dir.name}.old-"


def _recover(install_dir: Path) -> None:
    """Under the lock: undo a crashed fallback swap, delete temp dirs of crashed installs.

    A crash inside :func:`vz_linux.fsutil.swap_in`'s two-rename fallback leaves no install dir
    and the previous install at ``.<name>.old-*`` (the temp dir's name with ``.install-`` replaced
    by ``.old-``): it is renamed back first.
    """
    install_prefix, old_prefix = _stale_prefixes(install_dir)
    parent = install_dir.parent
    entries = sorted(parent.iterdir()) if parent.is_dir() else []
    if not install_dir.exists():
        for entry in entries:
            if entry.name.startswith(old_prefix) and entry.is_dir():
                os.rename(entry, install_dir)
                break
    # Only unlocked ones: a bundle assembly staging beside its out dir holds its stage's lock.
    sweep_stale(parent, install_prefix)
    sweep_stale(parent, old_prefix)


def _install_locked(src: _Source, install_dir: Path) -> None:
    source, meta_bytes, metadata = src.root, src.meta_bytes, src.metadata
    _recover(install_dir)
    if install_dir.is_symlink() or (install_dir.exists() and not install_dir.is_dir()):
        raise InstallError(f"install dir {install_dir} exists and is not a directory",
                           hint="remove it or pass another --install-dir")
    install_prefix, _ = _stale_prefixes(install_dir)
    # Staged by hand rather than with fsutil.publish_dir so that on_stage("swapped") can sit
    # between the swap and the deletion of the old install.
    tmp = Path(tempfile.mkdtemp(prefix=install_prefix, dir=install_dir.parent))
    try:
        os.chmod(tmp, 0o755)
        stamps: dict[str, _Stamp] = {}
        for i, (name, expected) in enumerate(metadata.artifact_checksums().items()):
            actual = _copy_hashed(src.dir_fd, source / name, tmp / name)
            if actual != expected:
                raise ChecksumMismatchError(
                    f"bundle {source} has a corrupted file: {name}: expected sha256 {expected}, found {actual}",
                    hint="rebuild the bundle; nothing was installed",
                )
            stamps[name] = _Stamp.of((tmp / name).lstat(), actual)
            if i == 0:
                _reached("copying")
        _write_new(tmp / layout.METADATA, meta_bytes)
        record = InstallRecord(metadata_sha256=sha256_bytes(meta_bytes), source=str(source.resolve()), files=stamps)
        _write_new(tmp / layout.INSTALL_RECORD, (record.model_dump_json(indent=2) + "\n").encode())
        fsync_dir(tmp)
        swap_in(tmp, install_dir)
        fsync_dir(install_dir.parent)
        _reached("swapped")
    except OSError as e:
        raise InstallError(
            f"installing into {install_dir} failed: {e.strerror or e}",
            hint="check free space and permissions, or pass another --install-dir",
        ) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # the old install after a swap, or the half-copied one


# --- public API ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Source:
    """A source bundle read through one directory fd, so a concurrent rebuild that swaps the
    directory (:func:`vz_linux.build.assemble.assemble_bundle`) cannot make us mix files of two builds."""

    root: Path
    dir_fd: int
    meta_bytes: bytes
    metadata: BundleMetadata

    def sizes(self) -> dict[str, int]:
        """Artifact sizes; every artifact present and a regular file (else the typed error)."""
        sizes: dict[str, int] = {}
        missing: list[str] = []
        for name in self.metadata.artifact_checksums():
            try:
                st = os.stat(name, dir_fd=self.dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                missing.append(name)
                continue
            if not stat.S_ISREG(st.st_mode):
                check_regular(self.root / name)
            sizes[name] = st.st_size
        if missing:
            raise MissingArtifactsError(f"bundle {self.root} lacks {', '.join(missing)}",
                                        hint="rebuild it with `vz-linux build`")
        return sizes


@contextlib.contextmanager
def _open_source(source: Path) -> Iterator[_Source]:
    try:
        dir_fd = os.open(source, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        raise MissingArtifactsError(
            f"bundle directory {source} does not exist" if not source.exists() else f"{source} is not a directory",
            hint="build one with `vz-linux build` or point at a bundle directory",
        ) from None
    try:
        path = source / layout.METADATA
        try:
            meta_bytes = _read_at(dir_fd, layout.METADATA)
        except FileNotFoundError:
            raise MissingArtifactsError(f"{source} has no {layout.METADATA}",
                                        hint="build one with `vz-linux build`") from None
        except OSError:
            check_regular(path)  # symlink/FIFO/...: UnsafeBundleError
            raise
        try:
            text = meta_bytes.decode()
        except UnicodeDecodeError:
            raise InvalidMetadataError(f"{path} is not UTF-8 text", hint="rebuild the bundle") from None
        yield _Source(source, dir_fd, meta_bytes, BundleMetadata.parse_text(text, str(path)))
    finally:
        os.close(dir_fd)


def _identical(snap: _Snapshot | None, meta_bytes: bytes, sizes: dict[str, int]) -> bool:
    return snap is not None and snap.metadata_sha256 == sha256_bytes(meta_bytes) and snap.sizes == sizes


def install_bundle(
    source: Path,
    install_dir: Path | None = None,
    *,
    profile: KernelProfile | None = None,
    required_capabilities: Iterable[KernelCapability] = frozenset(),
    require_exact_agent_version: bool = True,
) -> KernelBundle:
    """Validate ``source`` and install it into ``install_dir`` unless an identical intact install is there.

    ``install_dir`` None: the default install dir (``~/.vz/linux/<profile>/``) of ``profile``, or
    of the source's own profile when ``profile`` is None. Safe to call from many processes at
    once: they serialise on the install lock and all return the same installed bundle. Raises the
    typed errors of :mod:`vz_linux.bundle.model` for a bad source (nothing is installed then) and
    :class:`InstallError` for an unwritable target.
    """
    source = Path(source)
    with _open_source(source) as src:
        check_selection(src.metadata, source, profile=profile, required_capabilities=required_capabilities,
                        require_exact_agent_version=require_exact_agent_version)
        if install_dir is None:
            install_dir = layout.default_install_dir(profile or src.metadata.profile)
        install_dir = Path(install_dir)
        _install_unless_identical(src, install_dir, _install_locked)
        return bundle_from_metadata(install_dir, src.metadata)


def _install_unless_identical(src: _Source, target: Path, install: Callable[[_Source, Path], None]) -> None:
    """Run ``install`` under ``target``'s lock unless an identical intact install is there; checked
    once without the lock (the common, fast case) and again under it (another process may have
    installed meanwhile)."""
    sizes = src.sizes()
    if _identical(_snapshot(target), src.meta_bytes, sizes):
        return
    with install_lock(target):
        if not _identical(_snapshot(target), src.meta_bytes, sizes):
            install(src, target)


def install_legacy(
    source: Path,
    root: Path | None = None,
    *,
    require_exact_agent_version: bool = True,
) -> KernelBundle:
    """Install a developer bundle as the seed's legacy default: its files directly in ``root``
    (``~/.vz/linux/``), beside the profile dirs and ``pulled/``.

    That directory holds more than the bundle, so it cannot be swapped as a whole: under the same
    lock as :func:`install_bundle`, ``version.json`` and the install record are removed first, the
    artifacts are replaced one by one (each staged beside its name, hashed while copied, fsynced,
    renamed), then the record and ``version.json`` are written last. A reader sees the old bundle,
    no bundle, or the new one; a crash part-way leaves no legacy bundle (``~/.vz/linux/developer/``,
    installed first and swapped atomically, is untouched). docs/distribution.md.
    """
    source, root = Path(source), Path(root) if root is not None else layout.default_install_root()
    with _open_source(source) as src:
        check_selection(src.metadata, source, profile=KernelProfile.developer, required_capabilities=(),
                        require_exact_agent_version=require_exact_agent_version)
        _install_unless_identical(src, root, _install_in_place_locked)
        return bundle_from_metadata(root, src.metadata)


def _install_in_place_locked(src: _Source, root: Path) -> None:
    try:
        root.mkdir(parents=True, exist_ok=True)
        for name in (layout.METADATA, layout.INSTALL_RECORD):
            (root / name).unlink(missing_ok=True)
        fsync_dir(root)
        stamps: dict[str, _Stamp] = {}
        for name, expected in src.metadata.artifact_checksums().items():
            tmp = root / f".{name}.vz-install"
            tmp.unlink(missing_ok=True)  # left by a crashed install (we hold the lock)
            actual = _copy_hashed(src.dir_fd, src.root / name, tmp)
            if actual != expected:
                tmp.unlink()
                raise ChecksumMismatchError(
                    f"bundle {src.root} has a corrupted file: {name}: expected sha256 {expected}, found {actual}",
                    hint="nothing more was installed; the legacy ~/.vz/linux holds no bundle now")
            os.replace(tmp, root / name)
            stamps[name] = _Stamp.of((root / name).lstat(), actual)
        record = InstallRecord(metadata_sha256=sha256_bytes(src.meta_bytes), source=str(src.root.resolve()),
                               files=stamps)
        write_atomic(root / layout.INSTALL_RECORD, (record.model_dump_json(indent=2) + "\n").encode())
        write_atomic(root / layout.METADATA, src.meta_bytes)
    except OSError as e:
        raise InstallError(f"installing into {root} failed: {e.strerror or e}",
                           hint="check free space and permissions") from None


def load_installed(
    install_dir: Path,
    *,
    profile: KernelProfile | None = None,
    required_capabilities: Iterable[KernelCapability] = frozenset(),
    require_exact_agent_version: bool = True,
) -> KernelBundle:
    """An installed bundle, validated: through its install record when intact, else by re-hashing.

    After a successful re-hash the record is (re)written when the dir is writable, so the next
    call is fast again (e.g. a legacy ``~/.vz/linux`` install that predates records).
    """
    install_dir = Path(install_dir)
    snap = _snapshot(install_dir)
    if snap is not None:
        check_selection(snap.metadata, install_dir, profile=profile, required_capabilities=required_capabilities,
                        require_exact_agent_version=require_exact_agent_version)
        return bundle_from_metadata(install_dir, snap.metadata)
    with contextlib.ExitStack() as stack:
        locked = False
        if install_dir.is_dir():
            # The record is only an optimisation: never wait for an install in progress, and
            # read-only installs (e.g. system-wide) cannot be locked; validate without it then.
            with contextlib.suppress(InstallError):
                stack.enter_context(install_lock(install_dir, timeout=0))
                locked = True
        stats: dict[str, os.stat_result] = {}
        with contextlib.suppress(OSError, InvalidMetadataError):
            meta = BundleMetadata.read(install_dir / layout.METADATA)
            stats = {name: (install_dir / name).lstat() for name in meta.artifact_checksums()}
        bundle = validate_bundle(install_dir, profile=profile, required_capabilities=required_capabilities,
                                 require_exact_agent_version=require_exact_agent_version)
        if locked:
            _refresh_record(install_dir, bundle.metadata, stats)
        return bundle


def _refresh_record(install_dir: Path, metadata: BundleMetadata, stats: dict[str, os.stat_result]) -> None:
    # Stamps were taken *before* hashing: a file changed meanwhile has another ctime, so the next
    # fast check fails and re-hashes instead of trusting a hash of different content.
    expected = metadata.artifact_checksums()
    if set(stats) != set(expected):
        return
    try:
        meta_bytes = (install_dir / layout.METADATA).read_bytes()
        if BundleMetadata.parse_text(meta_bytes.decode()) != metadata:
            return
        record = InstallRecord(
            metadata_sha256=sha256_bytes(meta_bytes),
            source=str(install_dir.resolve()),
            files={name: _Stamp.of(stats[name], sha) for name, sha in expected.items()},
        )
        write_atomic(install_dir / layout.INSTALL_RECORD, (record.model_dump_json(indent=2) + "\n").encode())
    except (OSError, UnicodeDecodeError, InvalidMetadataError):
        pass  # only an optimisation


def read_install_record(install_dir: Path) -> InstallRecord | None:
    try:
        return InstallRecord.model_validate_json((Path(install_dir) / layout.INSTALL_RECORD).read_bytes())
    except (OSError, ValidationError):
        return None

