"""The kernel image cache (docs/profiles.md, "Sources, compile and cache").

Key = sha256 over the resolved ``.config``, the source identity, the toolchain identity, the
reproducible build environment (epoch, user, host) and the cache schema of the kernel pin. An entry ``cache_root()/kernels/<key>/`` holds the
image, the ``.config`` it was built from and ``kernel.json``; it is staged beside it and renamed
into place (:func:`fsutil.publish_dir`), so a reader sees a whole entry or none.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .. import hashing
from ..arch import Architecture
from ..bundle.metadata import KernelSourceInfo, ToolchainInfo
from ..fsutil import publish_dir
from ..hashing import sha256_file, sha256_text
from ..layout import cache_root

_META = "kernel.json"
_CONFIG = "config"
_STAGE_PREFIX = ".store-"  # every entry is staged under this name: a crashed store's stage is swept


def cache_key(*, config_text: str, source_identity: str, toolchain: ToolchainInfo, schema: str,
              arch: Architecture, build_env: Mapping[str, str], buildroot: str | None = None,
              cflags: tuple[str, ...] = ()) -> str:
    """``build_env`` is :func:`reproducible.kbuild_identity`: the build epoch, user and host.
    ``buildroot``: the package-manifest sha256 of the hermetic build root the kernel is built in
    (docs/reproducible.md); None on the host, whose keys stay as they were. ``cflags``:
    :func:`kbuild.arch_cflags`; none leaves the key as it was."""
    parts: dict[str, object] = {"config_sha256": sha256_text(config_text), "source": source_identity,
                                "toolchain": toolchain.model_dump(), "schema": schema, "arch": arch.value,
                                "build_env": dict(sorted(build_env.items()))}
    if buildroot is not None:
        parts["buildroot"] = buildroot
    if cflags:
        parts["cflags"] = list(cflags)
    return hashing.cache_key(parts)


def kernels_root() -> Path:
    return cache_root() / "kernels"


@dataclass(frozen=True)
class CachedKernel:
    key: str
    dir: Path
    image: Path
    release: str
    version: str
    image_sha256: str

    @property
    def config_path(self) -> Path:
        return self.dir / _CONFIG


def _image_name(arch: Architecture) -> str:
    return Path(arch.kernel_image_path).name  # "vmlinux" / "Image"


def lookup(key: str, arch: Architecture, root: Path | None = None) -> CachedKernel | None:
    """The entry for ``key``, or None. A damaged entry (image checksum wrong) counts as a miss."""
    entry = (root or kernels_root()) / key
    try:
        meta = json.loads((entry / _META).read_text())
        image = entry / _image_name(arch)
        if sha256_file(image) != meta["image_sha256"]:
            return None
        return CachedKernel(key=key, dir=entry, image=image, release=meta["release"],
                            version=meta["version"], image_sha256=meta["image_sha256"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def store(
    *,
    key: str,
    arch: Architecture,
    image: Path,
    config_text: str,
    release: str,
    version: str,
    source: KernelSourceInfo,
    toolchain: ToolchainInfo,
    extra: dict[str, object] | None = None,
    root: Path | None = None,
) -> CachedKernel:
    """Copy a freshly built image into the cache. If another build stored the key meanwhile,
    its entry wins (same inputs, same kernel)."""
    root = root or kernels_root()
    dest = root / key
    image_name = _image_name(arch)
    with publish_dir(dest, prefix=_STAGE_PREFIX) as stage:
        shutil.copyfile(image, stage / image_name)
        (stage / _CONFIG).write_text(config_text)
        meta = {"key": key, "arch": arch.value, "release": release, "version": version,
                "image": image_name, "image_sha256": sha256_file(stage / image_name),
                "image_size": (stage / image_name).stat().st_size,
                "config_sha256": sha256_text(config_text), "source": source.model_dump(),
                "toolchain": toolchain.model_dump(), **(extra or {})}
        (stage / _META).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        if dest.exists() and lookup(key, arch, root) is None:
            shutil.rmtree(dest)  # a damaged entry: replace it
    hit = lookup(key, arch, root)
    if hit is None:
        raise OSError(f"kernel cache entry {dest} is unreadable right after writing it")
    return hit
