#!/usr/bin/env python3
"""Density: how many idle VMs fit in a RAM budget, cold-booted against restored from a template.

Usage: .venv/bin/python benchmarks/density.py [--bundle-dir linux/out/container] [--count 4]
                                              [--settle-secs 5] [--budget-mib 8192] [--figures FILE]

Starts ``--count`` VMs booted cold (agent ready) and keeps them all running; waits ``--settle-secs``;
sums the proportional set size (``Pss`` of ``/proc/PID/smaps_rollup``: shared pages such as QEMU's
own code are split between the VMs) of every QEMU; stops them. Then the same with ``--count`` VMs
restored from the bundle's template (made first if missing; the default cache holds it). TCG, one
CPU, 256 MiB guests, the CLI's defaults otherwise.

Figures (docs/benchmarks.md): ``pss_idle_{cold,restored}_mean`` and ``rss_idle_{cold,restored}_mean``
(MiB per VM), ``vms_in_budget_{cold,restored}`` (count: ``--budget-mib`` / mean PSS, rounded down).
:func:`measure_density` is the importable part (the coordinator's closing benchmark uses it).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks.figures

from benchmarks.figures import Figures
from vz_linux.layout import default_bundle_dir
from vz_linux.profiles import KernelProfile
from vz_linux.vm.guest_source import GuestSource
from vz_linux.vm.linux_vm import LinuxVm
from vz_linux.vm.template import start_vm

MODES = ("cold", "restored")


@dataclass(frozen=True)
class Density:
    mode: str  # "cold" or "restored"
    count: int
    pss_mib: tuple[float, ...]  # per VM, after settling
    rss_mib: tuple[float, ...]
    budget_mib: int

    @property
    def pss_mean(self) -> float:
        return statistics.fmean(self.pss_mib)

    @property
    def vms_in_budget(self) -> int:
        return int(self.budget_mib // self.pss_mean)


def _rollup_mib(pid: int, key: str) -> float:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {key} in /proc/{pid}/smaps_rollup")


def measure_density(bundle: Path, count: int, settle_secs: float, *, budget_mib: int = 8192,
                    timeout: float = 180.0) -> dict[str, Density]:
    """``count`` idle VMs at once, cold then restored: each QEMU's PSS and RSS after ``settle_secs``."""
    config = GuestSource(bundle_dir=bundle).resolve(accel="tcg").config
    out: dict[str, Density] = {}
    for mode in MODES:
        with contextlib.ExitStack() as stack:
            vms: list[LinuxVm] = []
            for _ in range(count):
                vm = stack.enter_context(start_vm(config, cold=mode == "cold", timeout=timeout))
                vms.append(vm)
            time.sleep(settle_secs)
            pids = [vm.pid for vm in vms if vm.pid is not None]
            out[mode] = Density(mode, count, tuple(_rollup_mib(p, "Pss") for p in pids),
                                tuple(_rollup_mib(p, "Rss") for p in pids), budget_mib)
    return out


def measure(figures: Figures, bundle: Path, count: int, settle_secs: float, budget_mib: int = 8192) -> None:
    for d in measure_density(bundle, count, settle_secs, budget_mib=budget_mib).values():
        figures.put(f"pss_idle_{d.mode}_mean", d.pss_mean, "MiB", n=d.count)
        figures.put(f"rss_idle_{d.mode}_mean", statistics.fmean(d.rss_mib), "MiB", n=d.count)
        figures.put(f"vms_in_budget_{d.mode}", d.vms_in_budget, "count", n=d.count)


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--bundle-dir", type=Path, default=default_bundle_dir(KernelProfile.container))
    ap.add_argument("--count", type=int, default=4)
    ap.add_argument("--settle-secs", type=float, default=5.0)
    ap.add_argument("--budget-mib", type=int, default=8192)
    ap.add_argument("--figures", type=Path, help="also append the figures to this JSON-lines file")
    args = ap.parse_args()
    if args.count < 1 or args.settle_secs < 0 or args.budget_mib < 1:
        ap.error("--count and --budget-mib must be positive, --settle-secs not negative")
    figures = Figures(dimensions={"bundle": str(args.bundle_dir)})
    measure(figures, args.bundle_dir, args.count, args.settle_secs, args.budget_mib)
    if args.figures:
        figures.write_jsonl(args.figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
