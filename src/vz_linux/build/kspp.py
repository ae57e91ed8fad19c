"""The Kernel Self Protection Project's recommended Kconfig settings, as a report (docs/profiles.md,
"Hardening"): ``vz-linux config --profile container`` shows each one met or missed.

This is reporting, not enforcement: the container fragment applies the ones that measured cheap,
and docs/profiles.md lists the rest with the reason each is refused. The list follows the KSPP's
"Recommended Settings" page (compile-time part; the command-line part is measured by
benchmarks/kernel_variants.py).

Symbols are renamed and retired between kernel series (Linux 6.9 renamed the x86 mitigations to
``MITIGATION_*``; ``DEBUG_CREDENTIALS`` and ``HARDEN_BRANCH_PREDICTOR`` are gone): each setting
names its current symbol and its older names, and is judged by the name the kernel tree defines.
A setting none of whose names the tree defines is listed as not in the tree, neither met nor missed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

from ..arch import Architecture

_X86, _ARM = Architecture.x86_64, Architecture.arm64


@dataclass(frozen=True)
class KsppSetting:
    symbol: str  # the current name
    value: str  # "y", "n" or a value; "n" also holds when the symbol is absent
    arch: Architecture | None = None  # None: every arch
    older: tuple[str, ...] = ()  # earlier names of the same option, newest first

    @property
    def names(self) -> tuple[str, ...]:
        return (self.symbol, *self.older)

    def holds(self, config: Mapping[str, str]) -> bool:
        return config.get(self.symbol, "n") == self.value

    def __str__(self) -> str:
        return f"{self.symbol}={self.value}"


def _s(symbols: str, value: str = "y", arch: Architecture | None = None) -> tuple[KsppSetting, ...]:
    return tuple(KsppSetting(sym, value, arch) for sym in symbols.split())


def _renamed(symbol: str, *older: str, arch: Architecture | None = None) -> KsppSetting:
    return KsppSetting(symbol, "y", arch, older)


RECOMMENDED: tuple[KsppSetting, ...] = (
    # Sanity checks and memory-corruption detection.
    *_s("BUG BUG_ON_DATA_CORRUPTION SCHED_STACK_END_CHECK DEBUG_WX STRICT_KERNEL_RWX VMAP_STACK"),
    *_s("LIST_HARDENED DEBUG_NOTIFIERS DEBUG_SG DEBUG_CREDENTIALS"),
    # Stack, heap and copy hardening.
    *_s("STACKPROTECTOR STACKPROTECTOR_STRONG HARDENED_USERCOPY FORTIFY_SOURCE INIT_STACK_ALL_ZERO"),
    *_s("SLAB_FREELIST_RANDOM SLAB_FREELIST_HARDENED SHUFFLE_PAGE_ALLOCATOR RANDOM_KMALLOC_CACHES"),
    *_s("INIT_ON_ALLOC_DEFAULT_ON ZERO_CALL_USED_REGS RANDOMIZE_KSTACK_OFFSET_DEFAULT UBSAN_BOUNDS UBSAN_TRAP"),
    *_s("KFENCE PAGE_TABLE_CHECK PAGE_TABLE_CHECK_ENFORCED STATIC_USERMODEHELPER"),
    *_s("SLAB_MERGE_DEFAULT HARDENED_USERCOPY_DEFAULT_ON", "n"),
    # Address-space randomisation.
    *_s("RANDOMIZE_BASE RANDOMIZE_MEMORY", "y", _X86),
    *_s("RANDOMIZE_BASE", "y", _ARM),
    # Attack-surface reduction.
    *_s("SECURITY_DMESG_RESTRICT SECCOMP SECCOMP_FILTER"),
    *_s("DEVMEM DEVKMEM PROC_KCORE COMPAT_BRK LEGACY_TIOCSTI LDISC_AUTOLOAD USERFAULTFD KEXEC HIBERNATION"
        " BINFMT_MISC INET_DIAG ACPI_CUSTOM_METHOD PROC_VMCORE COMPAT_VDSO", "n"),
    *_s("MODIFY_LDT_SYSCALL X86_VSYSCALL_EMULATION IA32_EMULATION X86_X32_ABI", "n", _X86),
    *_s("LEGACY_VSYSCALL_NONE", "y", _X86),
    # CPU-vulnerability mitigations and control-flow integrity (x86 names as of Linux 6.9).
    _renamed("CPU_MITIGATIONS", "SPECULATION_MITIGATIONS", arch=_X86),
    _renamed("MITIGATION_PAGE_TABLE_ISOLATION", "PAGE_TABLE_ISOLATION", arch=_X86),
    _renamed("MITIGATION_RETPOLINE", "RETPOLINE", arch=_X86),
    _renamed("MITIGATION_RETHUNK", "RETHUNK", arch=_X86),
    _renamed("MITIGATION_SLS", "SLS", arch=_X86),
    *_s("X86_KERNEL_IBT", "y", _X86),
    *_s("UNMAP_KERNEL_AT_EL0 HARDEN_BRANCH_PREDICTOR MITIGATE_SPECTRE_BRANCH_HISTORY ARM64_PAN"
        " ARM64_SW_TTBR0_PAN ARM64_PTR_AUTH ARM64_BTI ARM64_E0PD ARM64_MTE SHADOW_CALL_STACK", "y", _ARM),
)

_CONFIG_LINE = re.compile(r"^\s*(?:menu)?config\s+(\w+)\s*$", re.MULTILINE)


@lru_cache(maxsize=4)
def tree_symbols(tree: Path, kernel_arch: str) -> frozenset[str]:
    """Every Kconfig symbol a kernel tree defines for ``kernel_arch`` (its arch/<arch>/ and every
    file outside arch/): which of a setting's names apply."""
    names: set[str] = set()
    for path in tree.rglob("Kconfig*"):
        rel = path.relative_to(tree).parts
        if path.is_file() and (rel[0] != "arch" or (len(rel) > 2 and rel[1] == kernel_arch) or len(rel) == 2):
            names.update(_CONFIG_LINE.findall(path.read_text(errors="replace")))
    return frozenset(names)


@dataclass(frozen=True)
class KsppReport:
    met: tuple[KsppSetting, ...]
    missed: tuple[tuple[KsppSetting, str], ...]  # (setting, what the config has)
    not_in_tree: tuple[KsppSetting, ...] = ()  # retired (or not yet added) in this kernel


def kspp_report(config: Mapping[str, str], arch: Architecture,
                defined: frozenset[str] | None = None) -> KsppReport:
    """Every recommended setting that applies to ``arch``, met or missed by ``config``. With
    ``defined`` (:func:`tree_symbols`), each setting is judged under the name the tree uses, and
    one the tree does not define is reported as not in the tree."""
    applicable: list[KsppSetting] = []
    absent: list[KsppSetting] = []
    for s in RECOMMENDED:
        if s.arch not in (None, arch):
            continue
        if defined is None:
            applicable.append(s)
            continue
        name = next((n for n in s.names if n in defined), None)
        if name is None:
            absent.append(s)
        else:
            applicable.append(replace(s, symbol=name, older=()))
    return KsppReport(met=tuple(s for s in applicable if s.holds(config)),
                      missed=tuple((s, config.get(s.symbol, "n" if s.symbol in config else "absent"))
                                   for s in applicable if not s.holds(config)),
                      not_in_tree=tuple(absent))
