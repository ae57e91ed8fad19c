#!/usr/bin/env python3
"""x86_64 vs arm64 container kernel phase under the same TCG, with an A/B of the boot-phase changes.

One interleaved run (every round boots each guest once, so load on the shared machine hits all
alike) of the x86_64 and the arm64 container bundles:

  x86_64, arm64          as shipped: x86 TCG tuning on (qemu.TCG_X86_CMDLINE…, -cpu max,-erms),
                         initramfs uncompressed;
  x86_64_off, arm64_off  the changes turned off: no TCG tuning, the initramfs gzip-compressed
                         (what bundles had before);
  --study adds x86_64 with each tuning item left out (x86_64_no_<item>), with a gzip initramfs
  (x86_64_gzip) and, where the kernel has CONFIG_RD_LZ4, lz4 (x86_64_lz4, arm64_lz4).

The initramfs variants are the bundle's own archive re-written (vz_linux.build.cpio), same bytes
inside. Phases are vz-linux-bench's (vz_linux.vm.bench): kernel = guest clock zero → ``Run /init``.
Named figures (ms): ``kernel_phase_<label>_p50/_p95``, ``boot_to_agent_<label>_p50/_p95``, and
``kernel_phase_ratio_x86_64_over_arm64`` (and ``…_off``): the goal is ≤ 1.5.

``--timeline`` boots each arch once with ``initcall_debug`` and prints the largest gaps of the printk
timeline and the slowest initcalls (where the kernel phase goes).

  .venv/bin/python benchmarks/kernel_phase.py --x86-bundle /tmp/x86 --arm64-bundle /tmp/arm \\
      --iterations 10 [--study] [--timeline] [--also before=/tmp/x86-old] [--jsonl figures.jsonl]

The coordinator imports :func:`measure` (and :func:`timeline`).
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks.figures

from benchmarks.figures import Figures
from vz_linux.arch import Architecture
from vz_linux.build import kernel_cache
from vz_linux.build.cpio import Compression, compress, decompress
from vz_linux.fsutil import write_atomic
from vz_linux.layout import cache_root
from vz_linux.profiles import KernelProfile
from vz_linux.vm.bench import BenchGuest, BenchOptions, BootSample, GuestResult, run_bench
from vz_linux.vm.linux_vm import LinuxVm, VmConfig
from vz_linux.vm.qemu import TCG_X86_ITEMS

ARCHES = (Architecture.x86_64, Architecture.arm64)


def _slug(item: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", item.lower()).strip("_")


def initramfs_variant(bundle: Path, compression: Compression, work: Path) -> Path:
    """The bundle's initramfs archive written with ``compression`` (cached in ``work`` by content)."""
    raw = decompress((bundle / "initramfs.img").read_bytes())
    image = compress(raw, compression)
    out = work / f"initramfs-{hashlib.sha256(image).hexdigest()[:16]}.{compression.value}"
    if not out.exists():
        work.mkdir(parents=True, exist_ok=True)
        write_atomic(out, image)
    return out


def kernel_unpacks(bundle: Path, arch: Architecture, compression: Compression) -> bool:
    """Whether the bundle's kernel (its cached ``.config``) has the decompressor for ``compression``."""
    if compression.kconfig is None:
        return True
    key = json.loads((bundle / "version.json").read_text()).get("kernel_cache_key")
    cached = kernel_cache.lookup(str(key), arch) if key else None
    if cached is None:
        return False
    return f"CONFIG_{compression.kconfig}=y" in cached.config_path.read_text().splitlines()


@dataclass(frozen=True)
class Plan:
    guests: tuple[BenchGuest, ...]
    unmeasured: tuple[str, ...]  # variants asked for that this kernel cannot boot (why, in words)


def plan(bundles: Mapping[Architecture, Path], work: Path, *, ab: bool = True, study: bool = False,
         also: Mapping[str, Path] | None = None) -> Plan:
    """The guests of one run, x86_64 and arm64 side by side; ``also``: more bundles as shipped, each
    labelled ``<arch>_<name>`` (another kernel build of one arch, for an A/B in the same run)."""
    work.mkdir(parents=True, exist_ok=True)
    guests: list[BenchGuest] = []
    unmeasured: list[str] = []
    for arch in ARCHES:
        bundle = bundles[arch]
        base = VmConfig.from_bundle(bundle, accel="tcg", memory_mib=256, cpus=1)
        assert base.arch is arch, f"{bundle} is a {base.arch} bundle, not {arch}"
        name = arch.value
        shipped = replace(base, initramfs=initramfs_variant(bundle, Compression.none, work))
        guests.append(BenchGuest(name, shipped, group=name))
        if ab:
            off = replace(base, tcg_tuning=False, initramfs=initramfs_variant(bundle, Compression.gzip, work))
            guests.append(BenchGuest(f"{name}_off", off, group=name))
        if not study:
            continue
        if arch is Architecture.x86_64:
            for item in TCG_X86_ITEMS:
                guests.append(BenchGuest(f"{name}_no_{_slug(item)}", replace(shipped, tcg_tuning_skip=(item,)),
                                         group=name))
            guests.append(BenchGuest(f"{name}_gzip", replace(
                shipped, initramfs=initramfs_variant(bundle, Compression.gzip, work)), group=name))
        if kernel_unpacks(bundle, arch, Compression.lz4):
            guests.append(BenchGuest(f"{name}_lz4", replace(
                shipped, initramfs=initramfs_variant(bundle, Compression.lz4, work)), group=name))
        else:
            unmeasured.append(f"{name}_lz4: the kernel has no CONFIG_RD_LZ4")
    for label, bundle in (also or {}).items():
        base = VmConfig.from_bundle(bundle, accel="tcg", memory_mib=256, cpus=1)
        guests.append(BenchGuest(f"{base.arch.value}_{label}", replace(
            base, initramfs=initramfs_variant(bundle, Compression.none, work)), group=base.arch.value))
    return Plan(tuple(guests), tuple(unmeasured))


def put_figures(figures: Figures, results: Sequence[GuestResult]) -> None:
    by_label = {r.label: r for r in results}
    for r in results:
        figures.put_samples(f"boot_to_agent_{r.label}", [s.total_s * 1000 for s in r.samples])
        kernel = [v * 1000 for s in r.samples if (v := s.phases.get("kernel")) is not None]
        if kernel:
            figures.put_samples(f"kernel_phase_{r.label}", kernel)
    for suffix in ("", "_off"):
        x86, arm = by_label.get(f"x86_64{suffix}"), by_label.get(f"arm64{suffix}")
        if x86 and arm and (kx := x86.phase("kernel")) and (ka := arm.phase("kernel")):
            figures.put(f"kernel_phase_ratio_x86_64_over_arm64{suffix}", kx.median / ka.median, "ratio",
                        n=min(kx.n, ka.n))


def measure(figures: Figures, bundles: Mapping[Architecture, Path], iterations: int, work: Path, *,
            ab: bool = True, study: bool = False, timeout_secs: float = 120.0,
            also: Mapping[str, Path] | None = None) -> list[GuestResult]:
    """Boot every guest of :func:`plan` ``iterations`` times, interleaved; put the named figures."""
    p = plan(bundles, work, ab=ab, study=study, also=also)
    for line in p.unmeasured:
        print(f"unmeasured: {line}", flush=True)

    def show(s: BootSample) -> None:
        k = s.phases.get("kernel")
        print(f"{s.label:>24} #{s.iteration:<2} boot→agent {s.total_s * 1000:6.0f} ms  kernel "
              f"{'-' if k is None else f'{k * 1000:.0f}'} ms", flush=True)

    results = run_bench(p.guests, BenchOptions(iterations=iterations, timeout_secs=timeout_secs, measure_rss=False),
                        on_sample=show)
    put_figures(figures, results)
    return results


_STAMP = re.compile(r"^\[\s*(\d+\.\d+)\]\s?(.*)$")
_INITCALL = re.compile(r"initcall (\S+) returned -?\d+ after (\d+) usecs")


@dataclass(frozen=True)
class Timeline:
    label: str
    gaps: list[tuple[float, str, str]]  # (seconds, line before, line after), largest first
    initcalls: list[tuple[float, str]]  # (seconds, name), slowest first
    initcall_sum_s: float
    run_init_s: float | None


def parse_timeline(label: str, dmesg: str, top: int = 8) -> Timeline:
    lines = [(float(m.group(1)), m.group(2)) for raw in dmesg.splitlines() if (m := _STAMP.match(raw))]
    gaps = sorted(((b[0] - a[0], a[1], b[1]) for a, b in itertools.pairwise(lines)), reverse=True)
    calls = sorted(((int(m.group(2)) / 1e6, m.group(1)) for _, text in lines if (m := _INITCALL.search(text))),
                   reverse=True)
    run_init = next((t for t, text in lines if re.match(r"Run \S+ as init process", text)), None)
    return Timeline(label, gaps[:top], calls[:top], sum(c for c, _ in calls), run_init)


def timeline(bundle: Path, *, tuned: bool = True, label: str | None = None, timeout_secs: float = 120.0,
             initramfs: Path | None = None) -> Timeline:
    """Boot once with ``initcall_debug`` and return where the kernel phase went."""
    cfg = VmConfig.from_bundle(bundle, accel="tcg", memory_mib=256, cpus=1, tcg_tuning=tuned,
                               cmdline_extra=("initcall_debug", "printk.time=1", "log_buf_len=4M"))
    if initramfs is not None:
        cfg = replace(cfg, initramfs=initramfs)
    with LinuxVm(cfg) as vm:
        vm.wait_for_agent(timeout_secs)
        r = vm.exec_collect(["dmesg"], timeout=60)
    return parse_timeline(label or f"{cfg.arch}{'' if tuned else '_off'}", r.stdout.decode(errors="replace"))


def print_timeline(t: Timeline) -> None:
    print(f"\n== {t.label}: Run /init at {t.run_init_s} s; initcalls sum {t.initcall_sum_s * 1000:.0f} ms")
    for secs, before, after in t.gaps:
        print(f"  gap {secs * 1000:6.1f} ms  after: {before[:90]}\n                   before: {after[:90]}")
    for secs, name in t.initcalls:
        print(f"  initcall {secs * 1000:6.1f} ms  {name}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--x86-bundle", type=Path, required=True, help="x86_64 container bundle dir")
    ap.add_argument("--arm64-bundle", type=Path, required=True, help="arm64 container bundle dir")
    ap.add_argument("--iterations", type=int, default=10)
    ap.add_argument("--no-ab", action="store_true", help="only the shipped variants (no *_off guests)")
    ap.add_argument("--study", action="store_true", help="each tuning item left out; gzip and lz4 initramfs")
    ap.add_argument("--timeline", action="store_true", help="also an initcall_debug boot per arch, on and off")
    ap.add_argument("--timeout-secs", type=float, default=120.0)
    ap.add_argument("--jsonl", type=Path, help="append the figures as JSON lines")
    ap.add_argument("--also", action="append", default=[], metavar="NAME=DIR",
                    help="another bundle in the same run, labelled <arch>_NAME (e.g. an older kernel build)")
    args = ap.parse_args()
    bundles = {Architecture.x86_64: args.x86_bundle, Architecture.arm64: args.arm64_bundle}
    work = cache_root() / "bench-kernel-phase"
    figures = Figures(dimensions={"profile": KernelProfile.container.value})
    if args.timeline:
        for arch in ARCHES:
            for tuned in (True, False):
                off_img = None if tuned else initramfs_variant(bundles[arch], Compression.gzip, work)
                print_timeline(timeline(bundles[arch], tuned=tuned, initramfs=off_img or initramfs_variant(
                    bundles[arch], Compression.none, work), timeout_secs=args.timeout_secs))
    also = dict(item.split("=", 1) for item in args.also)
    measure(figures, bundles, args.iterations, work, ab=not args.no_ab, study=args.study,
            timeout_secs=args.timeout_secs, also={k: Path(v) for k, v in also.items()})
    if args.jsonl:
        figures.write_jsonl(args.jsonl)
    return 0


if __name__ == "__main__":
    sys.exit(main())
