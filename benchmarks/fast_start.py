#!/usr/bin/env python3
"""Fast start (issue 14): every figure in one run, the VM-level ones interleaved round by round.

Usage: .venv/bin/python benchmarks/fast_start.py --x86-bundle DIR --arm64-bundle DIR [--iterations 10]
           [--density-count 3] [--startup-iterations 10] [--figures FILE] [--plot FILE.png]

Everything runs in a throw-away $HOME and cache ($VZ_LINUX_CACHE_DIR), so first uses are measured.
Once, before the rounds: the x86_64 template made from scratch (``template_build_ms``, its size
``template_disk_bytes``/``template_state_bytes``) and the BusyBox image's block image from scratch
(``block_image_build_ms``, ``block_image_disk_bytes``). Then per round, in this order, on the same
load:

* x86_64 cold boot → agent (QEMU RSS at ready), x86_64 restore from the template → agent (RSS);
* arm64 cold boot → agent (kernel phase);
* the trivial-init floor on the x86_64 kernel (benchmarks/boot.py) → agent overhead;
* ``vz-linux run -- true`` from the template and ``--cold`` (fresh processes);
* ``vz oci run --rm IMG -- true`` from the container template and ``--cold`` (fresh processes).

After the rounds: CLI start-up (benchmarks/startup.py) and density (benchmarks/density.py: idle
cold-booted vs restored VMs in 8 GiB). Figures and their goals:
``restore_over_cold_p50`` (≤ 0.15), ``oci_run_template_over_cold_p50`` (≤ 0.5; and
``oci_run_template_p50`` < 1000 ms), ``run_template_over_cold_p50``, ``agent_overhead_p50`` (< 100 ms),
``rss_ready_cold_p50``/``rss_ready_restored_p50`` (≤ 64 MiB), ``vz_linux_version_p50`` and
``import_vz_linux_p50`` (< 100 ms), ``kernel_phase_ratio_x86_64_over_arm64`` (≤ 1.5),
``vms_in_budget_cold``/``_restored``. ``--plot`` draws the run's boots (cold, restored, arm64).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks.*, tests.oci.conftest

from tests.oci.conftest import make_busybox_rootfs

from benchmarks import density, startup
from benchmarks.boot import floor_boot
from benchmarks.figures import Figures
from benchmarks.guests import busybox_path, floor_archive, write
from benchmarks.oci_run import block_image_build, environment, oci_run_cli
from benchmarks.snapshot import run_true_cli
from vz_linux.arch import Architecture
from vz_linux.cli.plot import plot_results
from vz_linux.vm.bench import (
    BenchGuest,
    BenchOptions,
    BootSample,
    GuestResult,
    boot_once,
    prepare_template,
)
from vz_linux.vm.guest_source import GuestSource
from vz_linux.vm.snapshot import STATE

Step = Callable[[int], float]  # one sample of a wall-clock figure, in seconds


def _ms(values: list[float]) -> list[float]:
    return [v * 1000 for v in values]


def measure(figures: Figures, x86: Path, arm64: Path, iterations: int, work: Path) -> list[GuestResult]:
    """The interleaved rounds and the one-off figures before them; returns the boots (for a plot)."""
    x86_cfg = GuestSource(bundle_dir=x86).resolve(accel="tcg")
    arm_cfg = GuestSource(bundle_dir=arm64).resolve(accel="tcg")
    cold = BenchGuest("x86_64 cold", x86_cfg.config, group="x86_64", sha256=x86_cfg.sha256)
    restored = BenchGuest("x86_64 restored", x86_cfg.config, restore=True, group="x86_64", sha256=x86_cfg.sha256)
    arm = BenchGuest("arm64 cold", arm_cfg.config, group="arm64", sha256=arm_cfg.sha256)
    floor_initramfs = write(floor_archive(busybox_path(Architecture.x86_64), Architecture.x86_64),
                            work / "floor-initramfs.img")
    floor = BenchGuest("floor", replace(x86_cfg.config, initramfs=floor_initramfs))
    opts = BenchOptions(iterations=iterations, timeout_secs=180)

    t0 = time.monotonic()
    built = prepare_template(restored, opts)
    assert built is not None, "a fresh cache must make the template"
    figures.put("template_build_ms", (time.monotonic() - t0) * 1000, "ms")
    figures.put("template_disk_bytes", built.disk_bytes, "bytes")
    figures.put("template_state_bytes", (built.path / STATE).stat().st_size, "bytes")

    image = make_busybox_rootfs(work / "rootfs")
    seconds, disk, _fs = block_image_build(image, work)
    figures.put("block_image_build_ms", seconds * 1000, "ms")
    figures.put("block_image_disk_bytes", disk, "bytes")

    cache = Path(os.environ["VZ_LINUX_CACHE_DIR"])
    vz = Path(sys.executable).parent / "vz"
    env = dict(os.environ)
    walls: dict[str, Step] = {
        "run_template": lambda i: run_true_cli(x86, cache),
        "run_cold": lambda i: run_true_cli(x86, cache, "--cold"),
        "oci_run_template": lambda i: oci_run_cli(vz, image, env),
        "oci_run_cold": lambda i: oci_run_cli(vz, image, env, "--cold"),
    }
    for step in walls.values():  # first uses (the CLI's own templates, the block image), not measured
        step(0)
    boots = (cold, restored, arm, floor)
    results = [GuestResult(g.label, group=g.group or g.label, mode=g.mode) for g in boots]
    samples: dict[str, list[float]] = {name: [] for name in walls}
    for i in range(1, iterations + 1):
        for guest, result in zip(boots, results, strict=True):
            sample: BootSample = floor_boot(guest, i, opts, None) if guest is floor else boot_once(guest, i, opts)
            result.samples.append(sample)
        for name, step in walls.items():
            samples[name].append(step(i))
        print(f"round {i}/{iterations}: " + ", ".join(
            f"{r.label} {r.samples[-1].total_s * 1000:.0f}" for r in results) + ", " + ", ".join(
            f"{n} {v[-1] * 1000:.0f}" for n, v in samples.items()) + " ms", file=sys.stderr, flush=True)
    _put_round_figures(figures, results, samples)
    return results[:3]


def _put_round_figures(figures: Figures, results: list[GuestResult], samples: dict[str, list[float]]) -> None:
    cold, restored, arm, floor = results
    n = len(cold.samples)
    figures.put_samples("boot_to_agent_cold", _ms([s.total_s for s in cold.samples]))
    figures.put_samples("restore_to_agent", _ms([s.total_s for s in restored.samples]))
    figures.put("restore_over_cold_p50", restored.total().median / cold.total().median, "ratio", n=n)
    for name, values in samples.items():
        figures.put_samples(name, _ms(values))
    for what in ("run", "oci_run"):
        figures.put(f"{what}_template_over_cold_p50", statistics.median(samples[f"{what}_template"])
                    / statistics.median(samples[f"{what}_cold"]), "ratio", n=n)
    figures.put_samples("floor_to_agent", _ms([s.total_s for s in floor.samples]))
    figures.put("agent_overhead_p50", (cold.total().median - floor.total().median) * 1000, "ms", n=n)
    for result, mode in ((cold, "cold"), (restored, "restored")):
        rss = [s.rss_bytes / 2**20 for s in result.samples if s.rss_bytes is not None]
        figures.put(f"rss_ready_{mode}_p50", statistics.median(rss), "MiB", n=len(rss))
    kernel = {r.group: r.phase("kernel") for r in (cold, arm)}
    for arch, summary in kernel.items():
        if summary is not None:
            figures.put(f"kernel_phase_{arch}_p50", summary.median * 1000, "ms", n=summary.n)
            figures.put(f"kernel_phase_{arch}_p95", summary.p95 * 1000, "ms", n=summary.n)
    x, a = kernel.get("x86_64"), kernel.get("arm64")
    if x is not None and a is not None:
        figures.put("kernel_phase_ratio_x86_64_over_arm64", x.median / a.median, "ratio", n=min(x.n, a.n))


def run(figures: Figures, x86: Path, arm64: Path, work: Path, *, iterations: int, density_count: int,
        startup_iterations: int) -> list[GuestResult]:
    """The whole benchmark in ``work`` (a throw-away $HOME and cache); returns the boots to plot."""
    (work / "home").mkdir(exist_ok=True)
    with environment({**os.environ, "HOME": str(work / "home"), "VZ_LINUX_CACHE_DIR": str(work / "cache"),
                       "VZ_LINUX_CONTAINER_BUNDLE_DIR": str(x86.resolve())}):
        results = measure(figures, x86, arm64, iterations, work)
        startup.measure(figures, startup_iterations)
        density.measure(figures, x86, density_count, settle_secs=5.0)
    return results


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--x86-bundle", type=Path, required=True, help="an x86_64 container bundle directory")
    ap.add_argument("--arm64-bundle", type=Path, required=True, help="an arm64 container bundle directory")
    ap.add_argument("--iterations", type=int, default=10)
    ap.add_argument("--density-count", type=int, default=3)
    ap.add_argument("--startup-iterations", type=int, default=10)
    ap.add_argument("--figures", type=Path, help="also append the figures to this JSON-lines file")
    ap.add_argument("--plot", type=Path, help="draw the run's boots (cold, restored, arm64) to this .png/.svg")
    args = ap.parse_args()
    if min(args.iterations, args.density_count, args.startup_iterations) < 1:
        ap.error("--iterations, --density-count and --startup-iterations must be positive")
    figures = Figures(dimensions={"x86_64": str(args.x86_bundle), "arm64": str(args.arm64_bundle)})
    print(f"load {os.getloadavg()[0]:.2f}", flush=True)
    with tempfile.TemporaryDirectory(prefix="vz-fast-start-") as tmp:
        results = run(figures, args.x86_bundle, args.arm64_bundle, Path(tmp), iterations=args.iterations,
                      density_count=args.density_count, startup_iterations=args.startup_iterations)
    print(f"load {os.getloadavg()[0]:.2f}", flush=True)
    if args.figures:
        figures.write_jsonl(args.figures)
    if args.plot:
        plot_results(results, args.plot, title="benchmarks/fast_start.py: x86_64 cold vs restored, arm64 cold")
        print(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
