"""Out-of-tree kernel compile per (profile, arch), and the description of a built kernel.

:class:`KernelInfo` is what the build hands to the userland stage (``userland.assemble_bundle``)
and what ends up in ``version.json``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .profiles import KernelCapability


@dataclass(frozen=True)
class SourceInfo:
    """Where the kernel source came from (recorded in version.json)."""

    kind: str  # "debian-package" | "tarball" | "tree"
    version: str  # exact upstream version from the tree's Makefile, e.g. "6.1.192"
    sha256: str | None  # of the tarball (None for an existing tree)
    origin: str  # package name + version, path or URL


@dataclass(frozen=True)
class ToolchainInfo:
    """Identity of the compiler and binutils that built the kernel (part of the cache key)."""

    compiler: str  # first line of `<CROSS_COMPILE>gcc --version`
    binutils: str  # first line of `<CROSS_COMPILE>ld --version`
    cross_compile: str  # CROSS_COMPILE= value ("" when native)


@dataclass(frozen=True)
class KernelInfo:
    version: str  # upstream version, e.g. "6.1.192"
    release: str  # uname -r, from include/config/kernel.release, e.g. "6.1.192-vz-container"
    config_text: str  # the resolved .config
    config_sha256: str
    cache_key: str
    source: SourceInfo
    toolchain: ToolchainInfo
    capabilities: frozenset[KernelCapability]
    image_path: Path  # the cached image (vmlinux on x86_64, arch/arm64/boot/Image on arm64)
