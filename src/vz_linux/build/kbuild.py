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

# Neither profile builds Rust code, yet Kconfig runs ``rustc --version`` and records the answer
# (CONFIG_RUSTC_VERSION, CONFIG_RUSTC_LLVM_VERSION, CONFIG_RUST_IS_AVAILABLE, ...): the host's
# rustc (or its absence, or a rustup proxy that fails for another user or under faketime) would
# change the resolved .config and the kernel cache key. Pinned to ``false``, Kconfig sees no Rust
# toolchain on every host (docs/reproducible.md).
NO_RUST: dict[str, str] = {"RUSTC": "false", "HOSTRUSTC": "false", "BINDGEN": "false"}

# x86_64: gcc inlines memset/memcpy of a known size as `rep stosb`/`rep movsb` (~900 sites each),
# which TCG runs one byte per step; free_initmem's 0xcc poisoning of the init pages alone cost
# ~200 ms of boot (docs/vm.md, "x86_64 under TCG"). Unrolled loops store 8 bytes at a time, under
# TCG and on hardware alike. Part of the kernel cache key (:func:`arch_cflags`).
_ARCH_CFLAGS: dict[Architecture, tuple[str, ...]] = {
    Architecture.x86_64: ("-mstringop-strategy=unrolled_loop",),
}


def arch_cflags(arch: Architecture) -> tuple[str, ...]:
    """Compiler flags the kernel of ``arch`` gets on top of its Makefile's (``KCFLAGS``, next to
    the reproducible build's prefix maps: :func:`reproducible.kbuild_env`); empty: none."""
    return _ARCH_CFLAGS.get(arch, ())


def make_argv(source: KernelSource, builddir: Path, arch: Architecture, *targets: str) -> list[str]:
    """``make`` of the kernel tree, out of tree in ``builddir``, for ``arch``, with no Rust toolchain."""
    argv = ["make", "-s", "-C", str(source.tree), f"O={builddir}", f"ARCH={arch.kernel_arch}",
            *(f"{k}={v}" for k, v in NO_RUST.items())]
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
        **NO_RUST,
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
