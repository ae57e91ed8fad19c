"""``vz-linux verify --boot``: boot a bundle and prove every declared capability live (docs/vm.md).

Each capability the bundle's ``version.json`` declares is proved in the guest by its probe
(:mod:`vz_linux.vm.probes`: ``vz-agent --probe NAME`` doing the thing, or the registry's snippet),
all in one boot; a capability the registry marks ``boot_probe`` (``ext4_root``) gets a boot of its
own, beside that one (:mod:`vz_linux.vm.root_probe`: booted from an ext4 disk). The inputs some probes need (a virtiofs token, a btrfs image) are made on the host
first and offered as one read-only share. A declared capability whose probe fails makes the
verification fail, naming it.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..bundle.model import KernelBundle, load_bundle
from ..capabilities import REGISTRY
from ..errors import CapabilityProbeError
from ..profiles import KernelCapability
from .accel import AccelChoice
from .linux_vm import LinuxVm, VmConfig
from .probes import PROBE_TIMEOUT, ProbeOutcome, probe_inputs, run_probe
from .root_probe import probe_ext4_root

# Capabilities proved by a boot of their own (REGISTRY[...].boot_probe): how each boots and checks.
BOOT_PROBES: dict[KernelCapability, Callable[[VmConfig, float], ProbeOutcome]] = {
    KernelCapability.ext4_root: probe_ext4_root,
}


@dataclass(frozen=True)
class ProbeRow:
    capability: KernelCapability
    declared: bool
    passed: bool
    evidence: str
    seconds: float = 0.0  # how long the probe took, seen from the host

    @property
    def ok(self) -> bool:
        return self.passed or not self.declared

    def to_json(self) -> dict[str, Any]:
        return {"capability": self.capability.value, "declared": self.declared, "passed": self.passed,
                "evidence": self.evidence, "seconds": round(self.seconds, 3)}


@dataclass(frozen=True)
class BootVerification:
    bundle: Path
    kernel_release: str
    accel: str
    rows: tuple[ProbeRow, ...]

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.rows)

    @property
    def failed(self) -> list[ProbeRow]:
        return [r for r in self.rows if not r.ok]

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "kernel_release": self.kernel_release, "accel": self.accel,
                "rows": [r.to_json() for r in self.rows]}


def verify_boot(
    bundle: KernelBundle | Path,
    *,
    timeout: float = 120.0,
    accel: AccelChoice | str = AccelChoice.auto,
    check: bool = True,
    on_retry: Callable[[int, float], None] | None = None,
    config: VmConfig | None = None,
    boot_probes: bool = True,
) -> BootVerification:
    """Boot ``bundle`` and run the probe of every declared capability.

    With ``check`` (the default), a declared capability whose probe fails raises
    :class:`CapabilityProbeError` carrying the whole table. ``config`` overrides the VM (tests).
    Without ``boot_probes`` the capabilities that need a boot of their own are left out of the
    table (to measure what that boot costs: benchmarks/verify_boot.py).
    """
    loaded = bundle if isinstance(bundle, KernelBundle) else load_bundle(Path(bundle))
    declared = sorted(loaded.capabilities)
    in_boot = [cap for cap in declared if not REGISTRY[cap].boot_probe]
    own_boot = [cap for cap in declared if REGISTRY[cap].boot_probe] if boot_probes else []
    base_cfg = cfg = config or VmConfig.from_bundle(loaded.root, accel=accel, arch=loaded.metadata.arch)
    rows: list[ProbeRow] = []
    # The boot-of-its-own probes boot beside the probes' boot (one more VM while it runs: the whole
    # verification takes about one boot less than in turn). Leaving early waits for them to end.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="vz-boot-probe") as pool:
        pending = [(cap, pool.submit(_timed, BOOT_PROBES[cap], base_cfg, timeout)) for cap in own_boot]
        with probe_inputs(in_boot, cfg.shares) as inputs:
            if inputs is not None:
                cfg = dataclasses.replace(cfg, shares=(*cfg.shares, inputs.share()))
            with LinuxVm(cfg) as vm:
                hello = vm.wait_for_agent(timeout, on_retry)
                for cap in in_boot:
                    started = time.monotonic()
                    outcome = run_probe(vm, cap, inputs, PROBE_TIMEOUT)
                    rows.append(ProbeRow(cap, True, outcome.passed, outcome.evidence, time.monotonic() - started))
                accel_used = vm.accel.accel.value if vm.accel is not None else "?"
        for cap, future in pending:
            outcome, seconds = future.result()
            rows.append(ProbeRow(cap, True, outcome.passed, outcome.evidence, seconds))
    rows.sort(key=lambda r: r.capability)
    result = BootVerification(loaded.root, hello.release, accel_used, tuple(rows))
    if check and not result.ok:
        raise probe_failure(result)
    return result


def _timed(probe: Callable[[VmConfig, float], ProbeOutcome], config: VmConfig,
           timeout: float) -> tuple[ProbeOutcome, float]:
    started = time.monotonic()
    return probe(config, timeout), time.monotonic() - started


def probe_failure(result: BootVerification) -> CapabilityProbeError:
    """The one-line error for a verification with failed probes (the table is in ``result``)."""
    detail = "; ".join(f"{r.capability.value} ({r.evidence or 'no output'})" for r in result.failed)
    return CapabilityProbeError(
        f"{result.bundle}: declared capabilities failed their live probe in the guest: {detail}",
        hint="the bundle's version.json claims what its kernel cannot do; rebuild it")
