"""A container image's root filesystem as a read-only ext4 block image (docs/oci.md, "Fast start").

Virtiofs devices block snapshots; a virtio-blk disk does not, and the file behind it can be another
of the same size when a VM is restored. So the restore path of ``vz oci run`` hands the guest the
image as an ext4 filesystem built on the host by Debian's ``mke2fs -d`` (no root, no loop device;
:func:`vz_linux.vm.descriptor.make_ext4`), attached read-only: read-only on the host by construction.

* **Key**: the image's manifest digest (OCI layouts, registry images: their unpacked tree is
  verified content), else a stamp of the directory tree (:func:`vz_linux.hashing.tree_stamp`: any
  change below it is a new key), plus the format version.
* **Size classes**: the filesystem is as small as its content allows, the file is then extended
  (sparse) to the smallest of :data:`SIZE_CLASSES` it fits: a container template carries a
  placeholder disk of that size, and the two are swapped at restore.
* **Cache**: ``cache_root()/oci-blocks/<key>/`` holding ``rootfs.ext4`` (mode 0444) and
  ``block.json``; built under ``<key>.lock`` (filelock) and published whole
  (:func:`vz_linux.fsutil.publish_dir`). ``block.json`` records the file's size, inode and mtime,
  and the ext4 magic is checked: an image changed or damaged since is built again.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import filelock

from ..errors import BlockImageError, VmDiskError
from ..fsutil import publish_dir, publish_file, write_atomic
from ..hashing import cache_key, tree_stamp
from ..layout import cache_root
from ..vm.descriptor import make_ext4

log = logging.getLogger(__name__)

FORMAT: Final = 1
_MIB = 1 << 20
_GIB = 1 << 30
SIZE_CLASSES: Final = (1 * _GIB, 4 * _GIB, 16 * _GIB)  # disk sizes; one container template each
IMAGE_FILE = "rootfs.ext4"
RECORD_FILE = "block.json"
PLACEHOLDER_PREFIX = "placeholder-"
LABEL = "vz-oci-image"
LOCK_TIMEOUT_S = 600.0
_EXT4_MAGIC_OFFSET = 1080  # superblock at 1024, s_magic at +56
_EXT4_MAGIC = b"\x53\xef"


def blocks_root() -> Path:
    return cache_root() / "oci-blocks"


@dataclass(frozen=True)
class BlockImage:
    """A built image: the file to attach, its disk size (a size class) and how long it took here
    (0 when it came from the cache)."""

    path: Path
    disk_bytes: int
    fs_bytes: int
    build_seconds: float
    built: bool


def image_key(rootfs: Path, digest: str | None) -> str:
    """The cache key of ``rootfs``'s block image: its manifest digest, else a stamp of its tree."""
    source = {"digest": digest} if digest else {"tree": tree_stamp(rootfs)}
    return cache_key({"format": FORMAT, **source})


def size_class(fs_bytes: int) -> int | None:
    """The smallest disk size that holds a filesystem of ``fs_bytes`` (None: too large for any)."""
    return next((c for c in SIZE_CLASSES if fs_bytes <= c), None)


def estimate_fs_bytes(rootfs: Path) -> int:
    """A filesystem size that holds ``rootfs``: its allocated bytes plus room for metadata (inodes,
    directories, bitmaps, the journal mke2fs adds), rounded up to a MiB."""
    used, entries = 0, 0
    for dirpath, dirnames, filenames in os.walk(rootfs):
        for name in dirnames + filenames:
            with contextlib.suppress(OSError):
                st = os.lstat(os.path.join(dirpath, name))
                used += st.st_blocks * 512
                entries += 1
    estimate = int(used * 1.25) + entries * 1024 + 16 * _MIB
    return -(-estimate // _MIB) * _MIB


def _record_for(path: Path, fs_bytes: int, key: str) -> dict[str, object]:
    st = path.stat()
    return {"format": FORMAT, "key": key, "size": st.st_size, "fs_bytes": fs_bytes, "inode": st.st_ino,
            "mtime_ns": st.st_mtime_ns}


def _intact(entry: Path, key: str) -> BlockImage | None:
    """The published image at ``entry`` if it is whole and unchanged since it was built, else None."""
    path = entry / IMAGE_FILE
    try:
        record = json.loads((entry / RECORD_FILE).read_bytes())
        if not isinstance(record, dict) or record != _record_for(path, int(record.get("fs_bytes", -1)), key):
            return None
        with open(path, "rb") as f:
            f.seek(_EXT4_MAGIC_OFFSET)
            if f.read(2) != _EXT4_MAGIC:
                return None
    except (OSError, ValueError, TypeError):
        return None
    size = int(record["size"])
    return BlockImage(path, size, int(record["fs_bytes"]), 0.0, False) if size in SIZE_CLASSES else None


def _make_fs(rootfs: Path, image: Path, fs_bytes: int) -> tuple[int, int]:
    """mke2fs ``rootfs`` into ``image``; an estimate that was too small is doubled (twice at most).
    Returns the filesystem's size and the disk's (its size class)."""
    for attempt in range(3):
        disk = size_class(fs_bytes)
        if disk is None:
            raise BlockImageError(f"image {rootfs} needs about {fs_bytes >> 20} MiB, over the largest "
                                  f"block image size ({SIZE_CLASSES[-1] >> 30} GiB)", hint="run it with --cold")
        try:
            make_ext4(rootfs, image, fs_bytes, LABEL)
            return fs_bytes, disk
        except VmDiskError as e:
            if attempt == 2 or e.hint is None:  # make_ext4 hints only when the filesystem was full
                raise BlockImageError(f"cannot build the block image of {rootfs}: {e.args[0]}",
                                      hint="run it with --cold") from e
            fs_bytes *= 2
    raise AssertionError("unreachable")


def _build(rootfs: Path, entry: Path, key: str) -> BlockImage:
    started = time.monotonic()
    with publish_dir(entry, replace=True, prefix=".stage-") as stage:
        image = stage / IMAGE_FILE
        fs_bytes, disk = _make_fs(rootfs, image, estimate_fs_bytes(rootfs))
        os.truncate(image, disk)  # sparse: the filesystem's own size stays fs_bytes
        os.chmod(image, 0o444)
        write_atomic(stage / RECORD_FILE, (json.dumps(_record_for(image, fs_bytes, key)) + "\n").encode())
    built = BlockImage(entry / IMAGE_FILE, disk, fs_bytes, time.monotonic() - started, True)
    log.info("built block image %s of %s: %d MiB filesystem in a %d GiB disk, %.0f ms", key[:16], rootfs,
             fs_bytes >> 20, disk >> 30, built.build_seconds * 1000)
    return built


def ensure_block_image(rootfs: Path, digest: str | None = None) -> BlockImage:
    """The block image of ``rootfs`` (``digest``: its manifest digest when it has one), built once
    per key under a lock; a damaged or changed one is built again."""
    key = image_key(rootfs, digest)
    entry = blocks_root() / key
    if (found := _intact(entry, key)) is not None:
        return found
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        with filelock.FileLock(entry.with_name(f"{key}.lock"), timeout=LOCK_TIMEOUT_S):
            if (found := _intact(entry, key)) is not None:
                return found  # another process built it while we waited
            if entry.exists():
                log.warning("block image %s is damaged or changed: building it again", key[:16])
            return _build(rootfs, entry, key)
    except filelock.Timeout as e:
        raise BlockImageError(f"block image {key[:16]} is being built by another process for over "
                              f"{LOCK_TIMEOUT_S:.0f}s", hint=f"remove {entry}.lock if that process is gone") from e
    except OSError as e:
        raise BlockImageError(f"cannot keep block images in {entry.parent}: {e.strerror or e}",
                              hint="make the cache directory writable, set VZ_LINUX_CACHE_DIR, or pass --cold") from e


def placeholder(disk_bytes: int) -> Path:
    """A sparse, all-zero file of ``disk_bytes`` (a size class): the disk a container template is made
    with, swapped for the container's image at restore."""
    path = blocks_root() / f"{PLACEHOLDER_PREFIX}{disk_bytes >> 30}g.img"
    try:
        st = path.stat() if path.is_file() else None
        if st is not None and st.st_size == disk_bytes and st.st_blocks == 0:
            return path
        path.parent.mkdir(parents=True, exist_ok=True)
        with publish_file(path, mode=0o444) as tmp:
            os.truncate(tmp, disk_bytes)
    except OSError as e:
        raise BlockImageError(f"cannot make the placeholder disk {path}: {e.strerror or e}",
                              hint="make the cache directory writable, set VZ_LINUX_CACHE_DIR, or pass --cold") from e
    return path
