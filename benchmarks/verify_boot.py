#!/usr/bin/env python3
"""`verify --boot` time per arch: one boot that proves every declared capability (docs/agent.md, "Probes").

Usage: .venv/bin/python benchmarks/verify_boot.py [--iterations N] [--bundle-x86_64 DIR] [--bundle-arm64 DIR]

Builds (or takes from the cache; never compiles a kernel unless the cache lacks it) the container
bundle of each arch, then runs ``verify_boot`` on them interleaved, x86_64 then arm64, N times, on the
same machine and load. Figures per arch:

* verify_boot_<arch>           — the whole verification (inputs made, boot, every probe, teardown);
* verify_boot_probes_<arch>    — the probes alone (sum of the per-probe times seen by the host);
* verify_boot_probe_<cap>_<arch> — each probe's time (median; ``ext4_root``'s is its whole boot);
* verify_boot_no_boot_probes_<arch> — the same verification without the boot-of-its-own probes
  (``ext4_root``), interleaved with the full one (A/B in one run);
* verify_boot_boot_probes_cost_<arch> — p50 with minus p50 without.

Prints one named figure per line (docs/benchmarks.md); ``--figures FILE`` also records them as JSON lines.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks.figures

from benchmarks.figures import Figures
from vz_linux.arch import Architecture
from vz_linux.build.pipeline import BuildOptions, build_bundle
from vz_linux.profiles import KernelProfile
from vz_linux.vm.boot_verify import verify_boot


def bundle_for(arch: Architecture, given: Path | None) -> Path:
    if given is not None:
        return given
    out = Path(os.environ.get("TMPDIR") or "/tmp") / f"vz-verify-bench-container-{arch.value}"
    build_bundle(BuildOptions(profile=KernelProfile.container, arch=arch, out_dir=out))
    return out


def measure(figures: Figures, bundles: dict[Architecture, Path], iterations: int) -> None:
    totals: dict[Architecture, list[float]] = {a: [] for a in bundles}
    without: dict[Architecture, list[float]] = {a: [] for a in bundles}
    probes: dict[Architecture, list[float]] = {a: [] for a in bundles}
    each: dict[tuple[Architecture, str], list[float]] = {}
    for _ in range(iterations):
        for arch, bundle in bundles.items():
            started = time.monotonic()
            result = verify_boot(bundle, accel="tcg", timeout=300)  # raises if a probe fails
            totals[arch].append((time.monotonic() - started) * 1000)
            probes[arch].append(sum(r.seconds for r in result.rows) * 1000)
            for r in result.rows:
                each.setdefault((arch, r.capability.value), []).append(r.seconds * 1000)
            started = time.monotonic()
            verify_boot(bundle, accel="tcg", timeout=300, boot_probes=False)
            without[arch].append((time.monotonic() - started) * 1000)
    for arch in bundles:
        figures.put_samples(f"verify_boot_{arch.value}", totals[arch])
        figures.put_samples(f"verify_boot_no_boot_probes_{arch.value}", without[arch])
        figures.put(f"verify_boot_boot_probes_cost_{arch.value}",
                    statistics.median(totals[arch]) - statistics.median(without[arch]), "ms", n=iterations)
        figures.put(f"verify_boot_probes_{arch.value}", statistics.median(probes[arch]), "ms", n=iterations)
    for (arch, cap), samples in sorted(each.items()):
        figures.put(f"verify_boot_probe_{cap}_{arch.value}", statistics.median(samples), "ms", n=len(samples))


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--iterations", type=int, default=3)
    ap.add_argument("--bundle-x86_64", type=Path)
    ap.add_argument("--bundle-arm64", type=Path)
    ap.add_argument("--figures", type=Path, help="also append the figures to this JSON-lines file")
    args = ap.parse_args()
    bundles = {Architecture.x86_64: bundle_for(Architecture.x86_64, args.bundle_x86_64),
               Architecture.arm64: bundle_for(Architecture.arm64, args.bundle_arm64)}
    figures = Figures()
    print(f"load {os.getloadavg()[0]:.2f}")
    measure(figures, bundles, args.iterations)
    if args.figures:
        figures.write_jsonl(args.figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
