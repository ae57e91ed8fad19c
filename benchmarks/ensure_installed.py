#!/usr/bin/env python3
"""Time ensure_kernel_profile() on an already-installed bundle of realistic size.

Usage: .venv/bin/python benchmarks/ensure_installed.py [--iterations N] [--profile P]

Builds a throw-away bundle (30 MB vmlinux, 5 MB initramfs, 5 MB crun of random bytes) in a temp
$HOME, installs it once, then times, in one run (A/B, same machine and load):

* ensure_with_source    — the bundle dir is still offered ($VZ_LINUX_<PROFILE>_BUNDLE_DIR): the
                          "identical install already there" check;
* ensure_installed_only — no bundle offered: the installed files are validated via the install record;
* full_rehash           — validate_bundle() on the install (what `vz-linux verify` does), for scale.

Prints one named figure per line: name, median and p95 in ms.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.foundation.bundles

from _timing import report, time_ms  # benchmarks/ is sys.path[0] when run as a script
from tests.foundation.bundles import make_bundle

from vz_linux import KernelProfile, ensure_kernel_profile, layout
from vz_linux.bundle.model import validate_bundle
from vz_linux.bundle.resolve import KernelBundleOptions, profile_env_var, resolve

SIZES = {"vmlinux": 30 << 20, "initramfs.img": 5 << 20, "crun": 5 << 20}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=50)
    ap.add_argument("--profile", default="container", choices=[p.value for p in KernelProfile])
    args = ap.parse_args()
    profile = KernelProfile(args.profile)
    with tempfile.TemporaryDirectory(prefix="vz-bench-") as tmp:
        for name in [k for k in os.environ if k.startswith("VZ_LINUX_")]:
            del os.environ[name]
        os.environ["HOME"] = str(Path(tmp) / "home")
        # This checkout may hold a real linux/out bundle (step 4 of the resolution order): point that
        # step at an empty dir so "installed only" really measures the installed-files path.
        layout.default_out_root = lambda: Path(tmp) / "no-checkout-out"
        src = Path(tmp) / "bundle"
        make_bundle(src, profile, sizes=SIZES)
        os.environ[profile_env_var(profile)] = str(src)
        t0 = time.perf_counter()
        installed = ensure_kernel_profile(profile)
        first_ms = (time.perf_counter() - t0) * 1000
        print(f"machine: {platform.machine()}, {os.cpu_count()} cpus, python {platform.python_version()}")
        print(f"bundle: {sum(SIZES.values()) / (1 << 20):.0f} MB ({', '.join(f'{k} {v >> 20} MB' for k, v in SIZES.items())})")
        print(f"first_install: {first_ms:.1f} ms")
        print(f"ensure_with_source resolves via: {resolve(KernelBundleOptions(profile=profile)).source_reason}")
        report("ensure_with_source", time_ms(lambda: ensure_kernel_profile(profile), args.iterations))
        del os.environ[profile_env_var(profile)]
        print(f"ensure_installed_only resolves via: {resolve(KernelBundleOptions(profile=profile)).source_reason}")
        report("ensure_installed_only", time_ms(lambda: ensure_kernel_profile(profile), args.iterations))
        report("full_rehash", time_ms(lambda: validate_bundle(installed.root), max(3, args.iterations // 10)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
