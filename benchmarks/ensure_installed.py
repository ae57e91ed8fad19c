#!/usr/bin/env python3
"""Time ensure_kernel_profile() on an already-installed bundle of realistic size.

Usage: .venv/bin/python benchmarks/ensure_installed.py [--iterations N] [--profile P]

Builds a throw-away bundle (30 MB vmlinux, 5 MB initramfs, 5 MB crun of random bytes) in a temp
$HOME, installs it once, then times, in one run (A/B, same machine and load):

* ensure_with_source    — the bundle dir is still offered ($VZ_LINUX_<PROFILE>_BUNDLE_DIR): the
                          "identical install already there" check;
* ensure_installed_only — no bundle offered: the installed files are validated via the install record;
* full_rehash           — validate_bundle() on the install (what `vz-linux verify` does), for scale.

Prints one named figure per line (docs/benchmarks.md); ``--figures FILE`` also records them as JSON lines.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks.figures, tests.foundation.bundles

from tests.foundation.bundles import make_bundle

from benchmarks.figures import Figures, time_ms
from vz_linux import KernelProfile, ensure_kernel_profile, layout
from vz_linux.bundle.model import validate_bundle
from vz_linux.bundle.resolve import KernelBundleOptions, profile_env_var, resolve

SIZES = {"vmlinux": 30 << 20, "initramfs.img": 5 << 20, "crun": 5 << 20}


def measure(figures: Figures, profile: KernelProfile, iterations: int, workdir: Path) -> dict[str, str | None]:
    """Put the figures into ``figures``; return how each timed call resolved (what it measured).

    Changes this process's environment ($HOME, $VZ_LINUX_*) and ``layout.default_out_root``:
    run it in a process of its own (the script, or a test's subprocess-free temp HOME).
    """
    for name in [k for k in os.environ if k.startswith("VZ_LINUX_")]:
        del os.environ[name]
    os.environ["HOME"] = str(workdir / "home")
    # This checkout may hold a real linux/out bundle (step 4 of the resolution order): point that
    # step at an empty dir so "installed only" really measures the installed-files path.
    layout.default_out_root = lambda: workdir / "no-checkout-out"
    src = workdir / "bundle"
    make_bundle(src, profile, sizes=SIZES)
    os.environ[profile_env_var(profile)] = str(src)
    t0 = time.perf_counter()
    installed = ensure_kernel_profile(profile)
    figures.put("first_install", (time.perf_counter() - t0) * 1000, "ms")
    figures.put("bundle_size", sum(SIZES.values()), "bytes")
    via = {"ensure_with_source": resolve(KernelBundleOptions(profile=profile)).source_reason}
    figures.put_samples("ensure_with_source", time_ms(lambda: ensure_kernel_profile(profile), iterations))
    del os.environ[profile_env_var(profile)]
    via["ensure_installed_only"] = resolve(KernelBundleOptions(profile=profile)).source_reason
    figures.put_samples("ensure_installed_only", time_ms(lambda: ensure_kernel_profile(profile), iterations))
    figures.put_samples("full_rehash", time_ms(lambda: validate_bundle(installed.root), max(3, iterations // 10)))
    return via


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--iterations", type=int, default=50)
    ap.add_argument("--profile", default="container", choices=[p.value for p in KernelProfile])
    ap.add_argument("--figures", type=Path, help="also append the figures to this JSON-lines file")
    args = ap.parse_args()
    figures = Figures(dimensions={"profile": args.profile})
    with tempfile.TemporaryDirectory(prefix="vz-bench-") as tmp:
        via = measure(figures, KernelProfile(args.profile), args.iterations, Path(tmp))
    for name, reason in via.items():
        print(f"{name} resolves via: {reason}")
    if args.figures:
        figures.write_jsonl(args.figures)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
