"""Assemble a complete bundle (docs/guest.md, "Bundle assembly"; the files and version.json:
docs/selection.md): kernel image + initramfs + crun + version.json.

The kernel stage hands over a :class:`KernelInfo`; this gets the guest agent, BusyBox and crun
for the arch, writes ``initramfs.img``, copies the kernel to ``vmlinux`` and crun to ``crun`` and
records every field of ``version.json``. Everything is staged in a directory next to ``out_dir``
and swapped into place at once (:func:`fsutil.swap_in`), so a failed build never leaves a half
bundle and a reader never sees one.
"""

from __future__ import annotations

import logging
import os
import shutil
from datetime import UTC, datetime
from pathlib import Path

from .. import layout
from ..arch import Architecture
from ..bundle.metadata import BundleMetadata, FileInfo, OciRuntimeInfo
from ..clock import utc_timestamp
from ..errors import BuildError
from ..fsutil import fsync_dir, owned_tempdir, swap_in
from ..profiles import KernelProfile
from ..version import AGENT_PROTOCOL_REVISION, AGENT_VERSION, METADATA_SCHEMA_VERSION
from .agent import build_agent
from .busybox import get_busybox
from .cpio import Compression
from .crun import ensure_crun
from .initramfs import InitramfsInputs, check_kernel_unpacks, write_initramfs
from .kernel import KernelInfo
from .reproducible import build_epoch

log = logging.getLogger(__name__)


def build_time(epoch: int | None = None) -> str:
    """``built``: the build epoch (:func:`reproducible.build_epoch`), never the wall clock; UTC."""
    return utc_timestamp(datetime.fromtimestamp(build_epoch() if epoch is None else epoch, UTC))


def _copy(src: Path, dst: Path, mode: int) -> None:
    try:
        shutil.copyfile(src, dst)
    except OSError as e:
        raise BuildError(f"cannot copy {src} into the bundle: {e.strerror}") from None
    os.chmod(dst, mode)


def assemble_bundle(
    *,
    out_dir: Path,
    profile: KernelProfile,
    arch: Architecture,
    kernel_image: Path,
    kernel: KernelInfo,
    compression: Compression = Compression.none,
) -> BundleMetadata:
    """Build the userland for ``arch`` and write the complete bundle to ``out_dir`` atomically."""
    if not kernel_image.is_file():
        raise BuildError(f"kernel image {kernel_image} does not exist")
    check_kernel_unpacks(compression, kernel.config_text)
    out_dir = Path(os.path.abspath(out_dir))
    # Owned (fsutil.owned_tempdir): the stage of an assembly that was SIGKILLed is removed by the
    # next one. The ".install-" name lets install's crash recovery treat a leftover like its own.
    with owned_tempdir(out_dir.parent, f".{out_dir.name}.install-") as stage:
        metadata = _stage_bundle(stage, profile=profile, arch=arch, kernel_image=kernel_image, kernel=kernel,
                                 compression=compression)
        fsync_dir(stage)
        os.chmod(stage, 0o755)
        swap_in(stage, out_dir)  # afterwards `stage` holds the previous bundle, if there was one
        _carry_over_nested_bundles(stage, out_dir)
        fsync_dir(out_dir.parent)
        _keep_unmoved(stage)
    return metadata


def _stage_bundle(stage: Path, *, profile: KernelProfile, arch: Architecture, kernel_image: Path,
                  kernel: KernelInfo, compression: Compression) -> BundleMetadata:
    """Write every bundle file and ``version.json`` into ``stage``."""
    busybox = get_busybox(arch)
    crun = ensure_crun(arch)
    agent = build_agent(arch)  # cached by its inputs
    epoch = build_epoch()  # one time for the whole bundle: the archive's mtimes and `built`
    write_initramfs(InitramfsInputs.default(busybox=busybox.path, agent=agent), stage / layout.INITRAMFS,
                    mtime=epoch, compression=compression)
    _copy(kernel_image, stage / layout.KERNEL, 0o644)
    _copy(crun.path, stage / layout.OCI_RUNTIME, 0o755)
    files = {name: FileInfo.of(stage / name) for name in layout.ARTIFACTS}
    metadata = BundleMetadata(
        schema_version=METADATA_SCHEMA_VERSION,
        kernel=kernel.version,
        kernel_release=kernel.release,
        profile=profile,
        security_profile=profile.security_profile,
        arch=arch,
        busybox=busybox.version,
        agent=AGENT_VERSION,
        agent_protocol_revision=AGENT_PROTOCOL_REVISION,
        built=build_time(epoch),
        sha256_vmlinux=files[layout.KERNEL].sha256,
        sha256_initramfs=files[layout.INITRAMFS].sha256,
        oci_runtime=OciRuntimeInfo(name=crun.name, version=crun.version,
                                   sha256=files[layout.OCI_RUNTIME].sha256),
        capabilities=sorted(c.value for c in kernel.capabilities),
        files=files,
        kernel_config_sha256=kernel.config_sha256,
        kernel_cache_key=kernel.cache_key,
        kernel_source=kernel.source,
        toolchain=kernel.toolchain,
    )
    metadata.write(stage / layout.METADATA)
    return metadata


def _carry_over_nested_bundles(old: Path, new: Path) -> None:
    """Move sub-directories of the previous bundle dir into the new one.

    The default layout nests bundles: linux/out/ (developer) holds linux/out/container/ and
    linux/out/arm64/. Rebuilding the outer bundle must not drop them; loose files are not kept.
    """
    if not old.is_dir():  # there was no previous bundle: swap_in renamed the stage into place
        return
    for entry in sorted(old.iterdir()):
        if entry.is_dir() and not entry.is_symlink() and not (new / entry.name).exists():
            os.rename(entry, new / entry.name)


def _keep_unmoved(stage: Path) -> None:
    """If a nested bundle of the previous bundle dir could not be moved back, keep the old dir under
    a name no sweep removes (the stage itself is deleted when its owner finishes)."""
    if not stage.exists() or not any(e.is_dir() and not e.is_symlink() for e in stage.iterdir()):
        return
    kept = stage.with_name(stage.name.replace(".install-", ".kept-", 1))
    os.rename(stage, kept)
    log.warning("kept %s: it holds directories of the previous bundle that were not moved back", kept)
