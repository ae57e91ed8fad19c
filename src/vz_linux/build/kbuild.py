"""The kernel's own build system: the one place ``make`` of the kernel tree, its environment and
the toolchain identity are spelled.

``kconfig`` (config resolution) and ``kernel`` (the compile) both drive the kernel's Makefile
through :func:`make_argv`; kconfiglib gets the same variables from :func:`kconfig_env`. The
toolchain identity (:func:`toolchain_info`) is part of the kernel cache key and of the kconfig
memo key, so it is computed here and nowhere else.
"""

from __future__ import annotations

from pathlib import Path

from ..arch import Architecture
from ..bundle.metadata import ToolchainInfo
from ..run import run
from .sources import KernelSource


def make_argv(source: KernelSource, builddir: Path, arch: Architecture, *targets: str) -> list[str]:
    """``make`` of the kernel tree, out of tree in ``builddir``, for ``arch``."""
    argv = ["make", "-s", "-C", str(source.tree), f"O={builddir}", f"ARCH={arch.kernel_arch}"]
    cross = arch.cross_compile_prefix()
    if cross:
        argv.append(f"CROSS_COMPILE={cross}")
    return [*argv, *targets]


def kconfig_env(source: KernelSource, arch: Architecture) -> dict[str, str]:
    """The environment the kernel's Makefile gives Kconfig (kconfiglib reads it from os.environ)."""
    cross = arch.cross_compile_prefix()
    return {
        "srctree": str(source.tree),
        "ARCH": arch.kernel_arch,
        "SRCARCH": arch.kernel_arch,
        "KERNELVERSION": source.info.version,
        "CC": f"{cross}gcc",
        "LD": f"{cross}ld",
        "HOSTCC": "gcc",
        "HOSTCXX": "g++",
    }


def tool_identity(tool: str) -> str:
    """The first line of ``<tool> --version``: how a compiler or linker is identified in cache keys."""
    lines = run([tool, "--version"]).stdout.decode(errors="replace").splitlines()
    return lines[0].strip() if lines else tool


def toolchain_info(arch: Architecture) -> ToolchainInfo:
    """Compiler and binutils versions for ``arch`` (part of the kernel cache key)."""
    cross = arch.cross_compile_prefix()
    return ToolchainInfo(
        compiler=tool_identity(f"{cross}gcc"),
        binutils=tool_identity(f"{cross}ld"),
        cross_compile=cross,
    )
