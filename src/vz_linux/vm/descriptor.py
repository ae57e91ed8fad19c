"""``vz vm linux init``: a VM descriptor ``N.linux.json`` plus its disk image.

The descriptor pins the exact kernel/initramfs a VM boots (paths and sha256) so a later boot can
prove it runs what was set up. Re-running on a compatible setup changes nothing; a descriptor whose
artifacts changed under it, or a disk of another size, is refused unless ``--force``.

Without a root filesystem the disk is sparse and empty. With one (``--rootfs DIR`` / ``--image REF``,
resolved to a directory by the caller) the disk is an ext4 filesystem populated from it by Debian's
``mke2fs -d`` (e2fsprogs; no root, no loop device), made beside the disk and renamed into place, and
the descriptor records ``root``: what :mod:`.persistent` boots with ``root=/dev/vda``.
"""

from __future__ import annotations

import enum
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import layout
from ..bundle.metadata import BundleMetadata
from ..bundle.resolve import ensure_installed_profile
from ..clock import utc_timestamp
from ..errors import (
    ChecksumMismatchError,
    CommandFailedError,
    DiskImageError,
    InvalidConfigError,
    MissingArtifactsError,
    ProfileMismatchError,
    VmDiskError,
    VmExistsError,
)
from ..fsutil import publish_file, write_atomic
from ..hashing import sha256_file
from ..profiles import KernelProfile
from ..run import run

DESCRIPTOR_SCHEMA_VERSION = 1
DESCRIPTOR_SUFFIX = ".linux.json"
DISK_SUFFIX = ".img"
DEFAULT_DISK_SIZE_GB = 8
_GIB = 1 << 30
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def default_vm_dir() -> Path:
    return layout.home_dir() / ".vz" / "vms"


@dataclass(frozen=True)
class Artifacts:
    """The kernel + initramfs a VM boots, as validated against their version.json."""

    kernel: Path
    initramfs: Path
    version_json: Path
    metadata: BundleMetadata

    @property
    def sha256_kernel(self) -> str:
        return self.metadata.sha256_vmlinux

    @property
    def sha256_initramfs(self) -> str:
        return self.metadata.sha256_initramfs

    @property
    def version(self) -> str:
        return f"{self.metadata.kernel_release or self.metadata.kernel} agent {self.metadata.agent}"


@dataclass(frozen=True)
class InitRequest:
    name: str
    output_dir: Path | None = None
    disk_size_gb: int | None = None
    profile: KernelProfile | None = None
    kernel: Path | None = None
    initramfs: Path | None = None
    version_json: Path | None = None
    force: bool = False
    rootfs: Path | None = None  # populate the disk as ext4 from this directory
    source: str | None = None  # what the rootfs came from (recorded): the --rootfs dir or the image


class InitStatus(enum.StrEnum):
    created = "created"
    compatible = "compatible"  # nothing changed
    updated = "updated"  # --force rewrote the descriptor and/or resized the disk


@dataclass(frozen=True)
class InitResult:
    status: InitStatus
    descriptor_path: Path
    descriptor: dict[str, Any]


def _check_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise MissingArtifactsError(f"{what} {path} does not exist or is not a file")
    return path.resolve()


def explicit_artifacts(kernel: Path, initramfs: Path, version_json: Path,
                       profile: KernelProfile | None) -> Artifacts:
    """--kernel/--initramfs/--version-json: the metadata must describe exactly these files."""
    kernel = _check_file(kernel, "kernel")
    initramfs = _check_file(initramfs, "initramfs")
    version_json = _check_file(version_json, "version.json")
    metadata = BundleMetadata.read(version_json)
    if profile is not None and metadata.profile is not profile:
        raise ProfileMismatchError(
            f"{version_json} describes a {metadata.profile.value} bundle, not {profile.value}")
    for path, want in ((kernel, metadata.sha256_vmlinux), (initramfs, metadata.sha256_initramfs)):
        have = sha256_file(path)
        if have != want:
            raise ChecksumMismatchError(
                f"{path}: sha256 {have} does not match {want} recorded in {version_json}",
                hint="pass the files the version.json was written for, or rebuild the bundle")
    return Artifacts(kernel, initramfs, version_json, metadata)


def installed_artifacts(profile: KernelProfile | None) -> Artifacts:
    bundle = ensure_installed_profile(profile)
    return Artifacts(bundle.kernel.resolve(), bundle.initramfs.resolve(),
                     bundle.version_json.resolve(), bundle.metadata)


def resolve_artifacts(req: InitRequest) -> Artifacts:
    given = [p is not None for p in (req.kernel, req.initramfs, req.version_json)]
    if any(given) and not all(given):
        raise InvalidConfigError("--kernel, --initramfs and --version-json go together",
                                 hint="pass all three, or none to use the installed profile")
    if req.kernel is not None and req.initramfs is not None and req.version_json is not None:
        return explicit_artifacts(req.kernel, req.initramfs, req.version_json, req.profile)
    return installed_artifacts(req.profile)


def build_descriptor(name: str, art: Artifacts, disk: Path, size_bytes: int, created: str,
                     root: dict[str, str] | None = None) -> dict[str, Any]:
    optional = {"root": root} if root is not None else {}
    return {
        "schema_version": DESCRIPTOR_SCHEMA_VERSION,
        "image_name": name,
        "profile": art.metadata.profile.value,
        "arch": art.metadata.arch.value,
        "kernel": str(art.kernel),
        "initramfs": str(art.initramfs),
        "version_json": str(art.version_json),
        "disk": {"path": str(disk), "size_bytes": size_bytes},
        "artifact_version": art.version,
        "sha256_kernel": art.sha256_kernel,
        "sha256_initramfs": art.sha256_initramfs,
        "created": created,
        **optional,
    }


def read_descriptor(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise InvalidConfigError(f"descriptor {path} is unreadable: {e}",
                                 hint="remove it or re-run with --force") from None
    if not isinstance(data, dict) or data.get("schema_version") != DESCRIPTOR_SCHEMA_VERSION:
        raise InvalidConfigError(f"descriptor {path} is not a schema {DESCRIPTOR_SCHEMA_VERSION} descriptor",
                                 hint="re-run with --force to rewrite it")
    return data


def verify_descriptor(path: Path) -> dict[str, Any]:
    """A descriptor's recorded artifacts still hash to what it recorded, and its disk is there."""
    data = read_descriptor(path)
    for key, sha_key in (("kernel", "sha256_kernel"), ("initramfs", "sha256_initramfs")):
        artifact = Path(str(data.get(key)))
        if not artifact.is_file():
            raise MissingArtifactsError(f"descriptor {path}: {key} {artifact} no longer exists",
                                        hint="reinstall the bundle or re-run `vz vm linux init --force`")
        have = sha256_file(artifact)
        if have != data.get(sha_key):
            raise ChecksumMismatchError(
                f"descriptor {path}: {key} {artifact} has sha256 {have}, the descriptor recorded "
                f"{data.get(sha_key)}", hint="re-run `vz vm linux init --force` to re-pin the artifacts")
    return data


def _create_sparse(path: Path, size: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.ftruncate(fd, size)  # a hole: no blocks allocated until the guest writes
    finally:
        os.close(fd)


def make_ext4(rootfs: Path, disk: Path, size: int, label: str) -> None:
    """``disk`` becomes a ``size``-byte ext4 holding ``rootfs`` (made beside it, renamed into place)."""
    if not rootfs.is_dir():
        raise VmDiskError(f"root filesystem {rootfs} is not a directory")
    with publish_file(disk, mode=0o644) as tmp:
        os.truncate(tmp, size)  # sparse: mke2fs writes only metadata and the files
        argv = ["mke2fs", "-q", "-F", "-t", "ext4", "-L", label[:16], "-E", "root_owner=0:0",
                "-d", str(rootfs), str(tmp)]
        try:
            r = run(argv, check=False, timeout=3600)
        except CommandFailedError as e:
            raise VmDiskError(f"mke2fs failed: {e}") from None
        if r.returncode != 0:
            msg = r.stderr.decode(errors="replace").strip().splitlines()
            last = msg[-1] if msg else f"exit code {r.returncode}"
            full = any(s in last.lower() for s in ("allocate", "no space", "too large", "could not"))
            raise VmDiskError(f"mke2fs could not populate {disk.name} from {rootfs}: {last}",
                              hint="pass a larger --disk-size-gb" if full else None)


def _init_root(req: InitRequest, rootfs: Path, out: Path, desc_path: Path, disk: Path) -> InitResult:
    """init with a root filesystem: a new ext4 disk (never over an existing VM's without --force)."""
    if not req.force and (desc_path.exists() or disk.exists()):
        raise VmExistsError(f"VM {req.name} already exists ({desc_path if desc_path.exists() else disk})",
                            hint="pass --force to replace its disk (its data is lost), or pick another --name")
    art = resolve_artifacts(req)
    size = (req.disk_size_gb or DEFAULT_DISK_SIZE_GB) * _GIB
    out.mkdir(parents=True, exist_ok=True)
    existed = desc_path.exists()
    make_ext4(rootfs, disk, size, req.name)
    root = {"filesystem": "ext4", "device": "/dev/vda", "source": req.source or str(rootfs)}
    descriptor = build_descriptor(req.name, art, disk, size, utc_timestamp(), root)
    write_atomic(desc_path, (json.dumps(descriptor, indent=2) + "\n").encode())
    return InitResult(InitStatus.updated if existed else InitStatus.created, desc_path, descriptor)


def init_vm(req: InitRequest) -> InitResult:
    check_name(req.name)
    if req.disk_size_gb is not None and req.disk_size_gb < 1:
        raise InvalidConfigError(f"--disk-size-gb must be at least 1, not {req.disk_size_gb}")
    out = (req.output_dir or default_vm_dir()).expanduser()
    desc_path = out / f"{req.name}{DESCRIPTOR_SUFFIX}"
    disk = (out / f"{req.name}{DISK_SUFFIX}").absolute()
    if req.rootfs is not None:
        return _init_root(req, req.rootfs, out, desc_path, disk)
    art = resolve_artifacts(req)

    existing = read_descriptor(desc_path) if desc_path.exists() and not req.force else None
    size_gb = req.disk_size_gb
    if size_gb is None:
        if existing is not None:
            size_gb = int(existing["disk"]["size_bytes"]) // _GIB
        elif disk.exists():
            size_gb = max(1, disk.stat().st_size // _GIB)
        else:
            size_gb = DEFAULT_DISK_SIZE_GB
    size = size_gb * _GIB

    if existing is not None:
        for key, have in (("kernel", art.kernel), ("initramfs", art.initramfs)):
            if existing.get(key) != str(have):
                raise InvalidConfigError(
                    f"descriptor {desc_path} points at {key} {existing.get(key)}, not {have}",
                    hint="re-run with --force to re-point it")
        verify_descriptor(desc_path)
        for key, want in (("sha256_kernel", art.sha256_kernel), ("sha256_initramfs", art.sha256_initramfs)):
            if existing.get(key) != want:
                raise ChecksumMismatchError(
                    f"descriptor {desc_path}: {key} {existing.get(key)} does not match the artifacts' "
                    f"{want}", hint="re-run with --force to re-pin the artifacts")

    if disk.exists():
        if not disk.is_file():
            raise DiskImageError(f"disk image {disk} exists and is not a regular file")
        actual = disk.stat().st_size
        if actual != size:
            if not req.force:
                raise DiskImageError(
                    f"disk image {disk} is {actual} bytes, not {size} ({size_gb} GiB)",
                    hint="pass the matching --disk-size-gb, or --force to resize it")
            os.truncate(disk, size)
            resized = True
        else:
            resized = False
        if existing is not None and existing["disk"].get("size_bytes") == size and existing["disk"].get(
                "path") == str(disk) and not resized:
            return InitResult(InitStatus.compatible, desc_path, existing)
        status = InitStatus.updated
    else:
        out.mkdir(parents=True, exist_ok=True)
        _create_sparse(disk, size)
        status = InitStatus.created if not desc_path.exists() else InitStatus.updated

    descriptor = build_descriptor(req.name, art, disk, size, utc_timestamp())
    write_atomic(desc_path, (json.dumps(descriptor, indent=2) + "\n").encode())
    return InitResult(status, desc_path, descriptor)


def check_name(name: str) -> None:
    if not _NAME.match(name):
        raise InvalidConfigError(f"VM name {name!r} must be 1-64 of [A-Za-z0-9._-], starting alphanumeric")


__all__ = ["InitRequest", "InitResult", "InitStatus", "check_name", "init_vm", "make_ext4", "verify_descriptor"]
