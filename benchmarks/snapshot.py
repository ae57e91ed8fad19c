#!/usr/bin/env python3
"""Fast start: restoring a template against booting cold, all measured in one interleaved run.

Usage: .venv/bin/python benchmarks/snapshot.py [--bundle-dir linux/out/container] [--iterations 10]
                                               [--template-builds 3] [--figures FILE] [--plot FILE.png]

First the template is made in a fresh cache dir ``--template-builds`` times (each a first use: cold
boot, agent ready, save): ``template_build_*`` and its size on disk. Then, per round, on the same
machine and load, in this order:

* cold     — ``vz_linux.vm.bench.boot_once``: QEMU spawned → the agent answers; QEMU's RSS then;
* restored — ``restore_once``: QEMU spawned → restored from the template, the agent answers, the
             guest's clock stepped and RNG reseeded; QEMU's RSS then;
* ``vz-linux run -- true`` wall time, a fresh process restoring from its template;
* ``vz-linux run --cold -- true`` wall time.

Figures (docs/benchmarks.md): ``boot_to_agent_cold_*``, ``restore_to_agent_*``,
``restore_over_cold_p50`` (goal ≤ 0.15), ``run_true_template_*``, ``run_true_cold_*``,
``run_template_over_cold_p50``, ``rss_ready_cold_p50`` / ``rss_ready_restored_p50`` (MiB),
``template_build_*``, ``template_disk_bytes``, ``template_state_bytes``. ``--plot`` draws the
cold and restored boots of the run (``vz-linux-bench --plot``'s picture).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks.figures

from benchmarks.figures import Figures
from vz_linux.cli.plot import plot_results
from vz_linux.layout import default_bundle_dir
from vz_linux.profiles import KernelProfile
from vz_linux.vm.bench import (
    COLD,
    RESTORED,
    BenchGuest,
    BenchOptions,
    GuestResult,
    boot_once,
    prepare_template,
)
from vz_linux.vm.guest_source import GuestSource
from vz_linux.vm.snapshot import STATE
from vz_linux.vm.template import TemplateBuild

CACHE_ENV = "VZ_LINUX_CACHE_DIR"


def run_true_cli(bundle: Path, cache: Path, *extra: str) -> float:
    """Wall seconds of one `vz-linux run [extra] -- true` in a fresh process."""
    argv = [sys.executable, "-c", "from vz_linux.cli.main import main; main()", "run", "--bundle-dir", str(bundle),
            "--accel", "tcg", *extra, "--", "true"]
    t0 = time.monotonic()
    p = subprocess.run(argv, env={**os.environ, CACHE_ENV: str(cache)}, capture_output=True, text=True, timeout=300)
    wall = time.monotonic() - t0
    if p.returncode != 0:
        raise RuntimeError(f"vz-linux run {' '.join(extra)} failed ({p.returncode}): {p.stderr.strip()}")
    return wall


def _build_templates(guest: BenchGuest, opts: BenchOptions, work: Path, builds: int) -> list[TemplateBuild]:
    """Make the template ``builds`` times, each in a fresh cache; the last cache stays in $VZ_LINUX_CACHE_DIR."""
    made = []
    for i in range(1, builds + 1):
        os.environ[CACHE_ENV] = str(work / f"cache-{i}")
        built = prepare_template(guest, opts)
        assert built is not None, "a fresh cache must make the template"
        made.append(built)
    return made


def measure(figures: Figures, bundle: Path, iterations: int, work: Path, template_builds: int = 1) -> list[GuestResult]:
    """The whole run; returns the cold and restored boots (for a plot)."""
    guest = GuestSource(bundle_dir=bundle).resolve(accel="tcg")
    sha = guest.sha256
    cold, restored = (BenchGuest(mode, guest.config, restore=mode == RESTORED, group=str(bundle), sha256=sha)
                      for mode in (COLD, RESTORED))
    opts = BenchOptions(iterations=iterations, timeout_secs=120)
    saved_cache = os.environ.get(CACHE_ENV)
    try:
        builds = _build_templates(restored, opts, work, template_builds)
        cache = Path(os.environ[CACHE_ENV])
        figures.put_samples("template_build", [b.seconds * 1000 for b in builds])
        figures.put("template_disk_bytes", builds[-1].disk_bytes, "bytes")
        figures.put("template_state_bytes", (builds[-1].path / STATE).stat().st_size, "bytes")
        run_true_cli(bundle, cache)  # makes the CLI's own template (no printk.time=1: another shape), warms up
        run_true_cli(bundle, cache, "--cold")
        results = [GuestResult(g.label, group=g.group or g.label, mode=g.mode) for g in (cold, restored)]
        walls: dict[str, list[float]] = {"template": [], "cold": []}
        for i in range(1, iterations + 1):
            for guest, result in zip((cold, restored), results, strict=True):
                result.samples.append(boot_once(guest, i, opts))
            walls["template"].append(run_true_cli(bundle, cache))
            walls["cold"].append(run_true_cli(bundle, cache, "--cold"))
            print(f"round {i}/{iterations}: cold {results[0].samples[-1].total_s * 1000:.0f} ms, restored "
                  f"{results[1].samples[-1].total_s * 1000:.0f} ms, run template {walls['template'][-1] * 1000:.0f} "
                  f"ms, run cold {walls['cold'][-1] * 1000:.0f} ms", file=sys.stderr, flush=True)
    finally:
        if saved_cache is None:
            os.environ.pop(CACHE_ENV, None)
        else:
            os.environ[CACHE_ENV] = saved_cache
    _put_figures(figures, results, walls)
    return results


def _put_figures(figures: Figures, results: list[GuestResult], walls: dict[str, list[float]]) -> None:
    cold, restored = results
    figures.put_samples("boot_to_agent_cold", [s.total_s * 1000 for s in cold.samples])
    figures.put_samples("restore_to_agent", [s.total_s * 1000 for s in restored.samples])
    n = len(cold.samples)
    figures.put("restore_over_cold_p50", restored.total().median / cold.total().median, "ratio", n=n)
    for phase in ("vmm", "load", "agent"):
        figures.put_samples(f"restore_phase_{phase}", [s.phases[phase] * 1000 for s in restored.samples
                                                       if s.phases.get(phase) is not None])
    figures.put_samples("run_true_template", [w * 1000 for w in walls["template"]])
    figures.put_samples("run_true_cold", [w * 1000 for w in walls["cold"]])
    figures.put("run_template_over_cold_p50", statistics.median(walls["template"]) / statistics.median(walls["cold"]),
                "ratio", n=n)
    for result in results:
        rss = [s.rss_bytes / 2**20 for s in result.samples if s.rss_bytes is not None]
        figures.put(f"rss_ready_{result.mode}_p50", statistics.median(rss), "MiB", n=len(rss))


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--bundle-dir", type=Path, default=default_bundle_dir(KernelProfile.container))
    ap.add_argument("--iterations", type=int, default=10)
    ap.add_argument("--template-builds", type=int, default=3)
    ap.add_argument("--figures", type=Path, help="also append the figures to this JSON-lines file")
    ap.add_argument("--plot", type=Path, help="draw the cold and restored boots to this .png/.svg")
    args = ap.parse_args()
    figures = Figures(dimensions={"bundle": str(args.bundle_dir)})
    print(f"load {os.getloadavg()[0]:.2f}", flush=True)
    with tempfile.TemporaryDirectory(prefix="vz-snapshot-bench-") as work:
        results = measure(figures, args.bundle_dir, args.iterations, Path(work), args.template_builds)
    if args.figures:
        figures.write_jsonl(args.figures)
    if args.plot:
        plot_results(results, args.plot, title="benchmarks/snapshot.py: cold boot vs restore from a template")
        print(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
