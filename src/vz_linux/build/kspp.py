"""The Kernel Self Protection Project's recommended Kconfig settings, as a report (docs/profiles.md,
"Hardening"): ``vz-linux config --profile container`` shows each one met or missed.

This is reporting, not enforcement: the container fragment applies the cheap ones, and
docs/profiles.md lists the rest with the reason each is not (yet) applied. The list follows
the KSPP's "Recommended Settings" page (compile-time part; the command-line part is measured
by benchmarks/kernel_variants.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ..arch import Architecture

_X86, _ARM = Architecture.x86_64, Architecture.arm64


@dataclass(frozen=True)
class KsppSetting:
    symbol: str
    value: str  # "y", "n" or a value; "n" also holds when the symbol is absent
    arch: Architecture | None = None  # None: every arch

    def holds(self, config: Mapping[str, str]) -> bool:
        return config.get(self.symbol, "n") == self.value


def _s(symbols: str, value: str = "y", arch: Architecture | None = None) -> tuple[KsppSetting, ...]:
    return tuple(KsppSetting(sym, value, arch) for sym in symbols.split())


RECOMMENDED: tuple[KsppSetting, ...] = (
    # Sanity checks and memory-corruption detection.
    *_s("BUG BUG_ON_DATA_CORRUPTION SCHED_STACK_END_CHECK DEBUG_WX STRICT_KERNEL_RWX VMAP_STACK"),
    *_s("LIST_HARDENED DEBUG_NOTIFIERS DEBUG_SG DEBUG_CREDENTIALS"),
    # Stack, heap and copy hardening.
    *_s("STACKPROTECTOR STACKPROTECTOR_STRONG HARDENED_USERCOPY FORTIFY_SOURCE INIT_STACK_ALL_ZERO"),
    *_s("SLAB_FREELIST_RANDOM SLAB_FREELIST_HARDENED SHUFFLE_PAGE_ALLOCATOR RANDOM_KMALLOC_CACHES"),
    *_s("INIT_ON_ALLOC_DEFAULT_ON ZERO_CALL_USED_REGS RANDOMIZE_KSTACK_OFFSET_DEFAULT UBSAN_BOUNDS UBSAN_TRAP"),
    *_s("KFENCE PAGE_TABLE_CHECK PAGE_TABLE_CHECK_ENFORCED"),
    *_s("SLAB_MERGE_DEFAULT HARDENED_USERCOPY_DEFAULT_ON", "n"),
    # Address-space randomisation.
    *_s("RANDOMIZE_BASE RANDOMIZE_MEMORY", "y", _X86),
    *_s("RANDOMIZE_BASE", "y", _ARM),
    # Attack-surface reduction.
    *_s("SECURITY_DMESG_RESTRICT STATIC_USERMODEHELPER SECCOMP SECCOMP_FILTER"),
    *_s("DEVMEM DEVKMEM PROC_KCORE COMPAT_BRK LEGACY_TIOCSTI LDISC_AUTOLOAD USERFAULTFD KEXEC HIBERNATION"
        " BINFMT_MISC INET_DIAG ACPI_CUSTOM_METHOD PROC_VMCORE MODIFY_LDT_SYSCALL X86_VSYSCALL_EMULATION"
        " IA32_EMULATION X86_X32_ABI COMPAT_VDSO", "n"),
    *_s("LEGACY_VSYSCALL_NONE", "y", _X86),
    # CPU-vulnerability mitigations and control-flow integrity.
    *_s("CPU_MITIGATIONS PAGE_TABLE_ISOLATION RETPOLINE X86_KERNEL_IBT", "y", _X86),
    *_s("UNMAP_KERNEL_AT_EL0 HARDEN_BRANCH_PREDICTOR ARM64_SW_TTBR0_PAN ARM64_PTR_AUTH ARM64_BTI"
        " ARM64_E0PD ARM64_MTE SHADOW_CALL_STACK", "y", _ARM),
)


@dataclass(frozen=True)
class KsppReport:
    met: tuple[KsppSetting, ...]
    missed: tuple[tuple[KsppSetting, str], ...]  # (setting, what the config has)


def kspp_report(config: Mapping[str, str], arch: Architecture) -> KsppReport:
    """Every recommended setting that applies to ``arch``, met or missed by ``config``."""
    applicable = [s for s in RECOMMENDED if s.arch in (None, arch)]
    return KsppReport(met=tuple(s for s in applicable if s.holds(config)),
                      missed=tuple((s, config.get(s.symbol, "n" if s.symbol in config else "absent"))
                                   for s in applicable if not s.holds(config)))
