"""``vz-linux verify --boot``: boot a bundle and prove every declared capability live (docs/vm.md).

Each capability the bundle's ``version.json`` declares is probed in the guest through the agent's
probe operation, with the registry's snippet (:data:`vz_linux.capabilities.REGISTRY`). A declared
capability whose probe fails makes the verification fail.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..bundle.model import KernelBundle, load_bundle
from ..capabilities import REGISTRY
from ..errors import CapabilityProbeError
from ..profiles import KernelCapability
from .accel import AccelChoice
from .linux_vm import LinuxVm, VmConfig

PROBE_TIMEOUT = 20.0


@dataclass(frozen=True)
class ProbeRow:
    capability: KernelCapability
    declared: bool
    passed: bool
    evidence: str

    @property
    def ok(self) -> bool:
        return self.passed or not self.declared

    def to_json(self) -> dict[str, Any]:
        return {"capability": self.capability.value, "declared": self.declared, "passed": self.passed,
                "evidence": self.evidence}


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


def _one_line(text: str, limit: int = 100) -> str:
    flat = " | ".join(line.strip() for line in text.strip().splitlines() if line.strip())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def verify_boot(
    bundle: KernelBundle | Path,
    *,
    timeout: float = 120.0,
    accel: AccelChoice | str = AccelChoice.auto,
    check: bool = True,
    on_retry: Callable[[int, float], None] | None = None,
    config: VmConfig | None = None,
) -> BootVerification:
    """Boot ``bundle`` and run the probe of every declared capability.

    With ``check`` (the default), a declared capability whose probe fails raises
    :class:`CapabilityProbeError` carrying the whole table. ``config`` overrides the VM (tests).
    """
    loaded = bundle if isinstance(bundle, KernelBundle) else load_bundle(Path(bundle))
    declared = sorted(loaded.capabilities)
    cfg = config or VmConfig.from_bundle(loaded.root, accel=accel, arch=loaded.metadata.arch)
    rows: list[ProbeRow] = []
    with LinuxVm(cfg) as vm:
        hello = vm.wait_for_agent(timeout, on_retry)
        for cap in declared:
            res = vm.probe(cap.value, REGISTRY[cap].probe, timeout=PROBE_TIMEOUT)
            evidence = _one_line(res.evidence) or (f"exit code {res.exit_code}" if res.exit_code is not None
                                                  else "no output")
            if res.timed_out:
                evidence = f"timed out after {PROBE_TIMEOUT:.0f}s: {evidence}"
            rows.append(ProbeRow(cap, True, res.passed, evidence))
        accel_used = vm.accel.accel.value if vm.accel is not None else "?"
    result = BootVerification(loaded.root, hello.release, accel_used, tuple(rows))
    if check and not result.ok:
        raise probe_failure(result)
    return result


def probe_failure(result: BootVerification) -> CapabilityProbeError:
    """The one-line error for a verification with failed probes (the table is in ``result``)."""
    detail = "; ".join(f"{r.capability.value} ({r.evidence or 'no output'})" for r in result.failed)
    return CapabilityProbeError(
        f"{result.bundle}: declared capabilities failed their live probe in the guest: {detail}",
        hint="the bundle's version.json claims what its kernel cannot do; rebuild it")
