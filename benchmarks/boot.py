#!/usr/bin/env python3
"""Three-way boot comparison, all in one run, interleaved:

  container  the container bundle (its kernel + initramfs + agent), to agent-ready;
  debian     the same initramfs on Debian's linux-image-cloud-amd64 kernel (virtio as modules,
             insmod'ed by a first /init; -M pc, see benchmarks/guests.py), to agent-ready;
  floor      the container kernel with a trivial /init that writes one line to the agent port;
  shell-init the bundle's initramfs rebuilt from this checkout with init mounting through BusyBox
             (as before `vz-agent --mount-api`): A/B of the agent's C mounts.

Prints named figures with units: p50/p95 boot→ready per guest, the phase split, QEMU's RSS at
agent-ready, and the two goals (container p50 ≤ 0.5x debian p50; agent overhead = container p50 -
floor p50 < 100 ms). ``--cmdline-study`` measures each boot-time cmdline choice (leave-one-out);
``--memory-study`` QEMU's RSS at agent-ready with each memory option undone (THP, TCG cache size,
``init_on_alloc``), docs/vm.md "Memory".

  .venv/bin/python benchmarks/boot.py --bundle-dir linux/out/container --iterations 10 [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import guests

from vz_linux.arch import Architecture
from vz_linux.build.agent import build_agent
from vz_linux.layout import cache_root, default_bundle_dir
from vz_linux.profiles import KernelProfile
from vz_linux.vm.bench import (
    BenchGuest,
    BenchOptions,
    BootSample,
    GuestResult,
    Summary,
    boot_once,
    host_info,
    interleave,
)
from vz_linux.vm.linux_vm import LinuxVm, VmConfig
from vz_linux.vm.qemu import FAST_CMDLINE


def floor_boot(guest: BenchGuest, iteration: int, opts: BenchOptions, log: object) -> BootSample:
    """Spawn → the floor /init's line arrives on the agent channel."""
    with LinuxVm(guest.config) as vm:
        conn = vm.open_agent_channel(opts.timeout_secs)
        conn.settimeout(opts.timeout_secs)
        buf = b""
        while b"\n" not in buf:
            chunk = conn.recv(256)
            if not chunk:
                raise RuntimeError(f"floor guest closed the channel early: {buf!r}")
            buf += chunk
        got = time.monotonic_ns()
        rss = vm.rss_bytes()
        total = (got - vm.spawned_ns) / 1e9
        uptime = float(buf.split()[1]) if len(buf.split()) > 1 else None
    phases: dict[str, float | None] = {"vmm": total - uptime if uptime is not None else None,
                                       "kernel+init": uptime}
    return BootSample(guest.label, iteration, total, phases, "", rss)


def _fmt(s: Summary | None, scale: float = 1000.0, unit: str = "ms") -> str:
    if s is None:
        return "-"
    return f"p50 {s.median * scale:.0f} {unit}, p95 {s.p95 * scale:.0f} {unit}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle-dir", type=Path, default=default_bundle_dir(KernelProfile.container))
    ap.add_argument("--iterations", type=int, default=10)
    ap.add_argument("--timeout-secs", type=float, default=90.0)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--only", default="container,debian,floor", help="comma-separated subset")
    ap.add_argument("--cmdline-study", action="store_true", help="measure each fast-boot cmdline item")
    ap.add_argument("--memory-study", action="store_true", help="RSS with each memory option undone")
    args = ap.parse_args()

    arch = Architecture.x86_64
    bundle = args.bundle_dir
    work = cache_root() / "bench-guests"
    work.mkdir(parents=True, exist_ok=True)
    busybox = guests.busybox_path(arch)
    agent = build_agent(arch, work / "agent")
    deb = guests.debian_cloud_kernel()
    deb_initramfs = guests.write(guests.with_debian_modules(guests.bundle_archive(busybox, agent), deb),
                                 work / "debian-initramfs.img")
    floor_initramfs = guests.write(guests.floor_archive(busybox, arch), work / "floor-initramfs.img")
    shell_initramfs = guests.write(guests.shell_init_archive(busybox, agent), work / "shell-init-initramfs.img")
    base = VmConfig(kernel=bundle / "vmlinux", initramfs=bundle / "initramfs.img", arch=arch, accel="tcg",
                    memory_mib=256)
    candidates = {
        "container": BenchGuest("container", base),
        "debian": BenchGuest("debian", replace(base, kernel=deb.image, initramfs=deb_initramfs, machine="pc")),
        "floor": BenchGuest("floor", replace(base, initramfs=floor_initramfs)),
        "shell-init": BenchGuest("shell-init", replace(base, initramfs=shell_initramfs)),
    }
    if args.cmdline_study:
        candidates = {"none": BenchGuest("cmdline: none", replace(base, fast_cmdline=False)),
                      "all": BenchGuest("cmdline: all", base)}
        candidates["tsc"] = BenchGuest("all, TSC rate not told", replace(base, tell_tsc_rate=False))
        for item in FAST_CMDLINE:
            rest = tuple(x for x in FAST_CMDLINE if x != item)
            candidates[item] = BenchGuest(f"cmdline: all but {item}",
                                          replace(base, fast_cmdline=False, cmdline_extra=rest))
    if args.memory_study:
        candidates = {
            "default": BenchGuest("mem: default (no THP, tb-size 64)", base),
            "thp": BenchGuest("mem: THP on", replace(base, tcg_huge_pages=True)),
            "tb": BenchGuest("mem: tb-size QEMU default", replace(base, tcg_tb_size_mib=None)),
            "both": BenchGuest("mem: THP on, tb-size default", replace(base, tcg_huge_pages=True, tcg_tb_size_mib=None)),
            # A later init_on_alloc= wins over HARDENING_CMDLINE's (measured only: the default keeps it).
            "ioa": BenchGuest("mem: init_on_alloc=0", replace(base, cmdline_extra=("init_on_alloc=0",))),
        }
    study = args.cmdline_study or args.memory_study
    selected = [candidates[k] for k in candidates if study or k in args.only.split(",")]
    opts = BenchOptions(iterations=args.iterations, timeout_secs=args.timeout_secs)
    results = {g.label: GuestResult(g.label) for g in selected}
    started = time.time()
    for g, i in interleave(selected, args.iterations):
        s = floor_boot(g, i, opts, None) if g.label == "floor" else boot_once(g, i, opts)
        results[g.label].samples.append(s)
        ph = " ".join(f"{k}={v * 1000:.0f}" for k, v in s.phases.items() if v is not None)
        print(f"{g.label:>28} #{i:<2} {s.total_s * 1000:7.0f} ms  rss {(s.rss_bytes or 0) / 2**20:.0f} MiB  {ph}",
              flush=True)

    print(f"\nmachine: {json.dumps(host_info())}, accel tcg, guest 256 MiB, {args.iterations} iterations "
          f"interleaved, {time.time() - started:.0f} s")
    for r in results.values():
        print(f"{r.label}: boot_to_ready {_fmt(r.total())}; RSS {_fmt(r.rss(), 1 / 2**20, 'MiB')}")
        for p in ("vmm", "kernel", "init", "agent", "kernel+init"):
            if (ps := r.phase(p)) is not None:
                print(f"    phase {p}: {_fmt(ps)}")
    if {"container", "debian"} <= results.keys():
        c, d = (results[k].total().median for k in ("container", "debian"))
        print(f"container_over_debian_p50 = {c / d:.3f} (goal <= 0.5)")
    if "floor" in results:
        f = results["floor"].total().median
        for label, name in (("container", "agent_overhead_p50"), ("shell-init", "shell_init_overhead_p50")):
            if label in results:
                print(f"{name} = {(results[label].total().median - f) * 1000:.0f} ms (goal < 100 ms)")
    if args.json:
        data = {"host": host_info(), "iterations": args.iterations,
                "samples": [vars(s) for r in results.values() for s in r.samples]}
        args.json.write_text(json.dumps(data, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
