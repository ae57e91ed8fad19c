#!/usr/bin/env python3
"""`vz oci run` cost next to a bare boot → agent, measured interleaved in one run.

Usage: .venv/bin/python benchmarks/oci_run.py [--bundle-dir linux/out/container] [--iterations 5]

Per round (A B C, same machine and load):

* boot_to_agent       — the bundle booted bare (vz_linux.vm.bench.boot_once): QEMU spawned → agent hello;
* oci_run_cli         — wall time of `vz oci run --rm --kernel-profile container IMAGE -- true`
                        (a fresh process: Python start-up, host prepare, boot, prepare, crun, VM stop);
* oci_run phases      — the same run in-process (vz_linux.oci.container.run_foreground): host_prepare,
                        boot_to_agent, guest_prepare (mount shares + overlay), crun_run, vm_stop;
* container_start     — guest_prepare + crun_run: what a container costs on top of the boot.

IMAGE is a BusyBox rootfs directory built here. Prints one named figure per line (median, ms).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tests.oci.conftest (the BusyBox rootfs builder)

from tests.oci.conftest import make_busybox_rootfs  # noqa: E402

from vz_linux.bundle.resolve import ensure_kernel_profile  # noqa: E402
from vz_linux.layout import cache_root  # noqa: E402
from vz_linux.oci.config import RuntimeConfig  # noqa: E402
from vz_linux.oci.container import ContainerRequest, run_foreground  # noqa: E402
from vz_linux.profiles import KernelProfile  # noqa: E402
from vz_linux.vm.bench import BenchGuest, BenchOptions, boot_once, host_info  # noqa: E402
from vz_linux.vm.linux_vm import VmConfig  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle-dir", type=Path, default=REPO / "linux" / "out" / "container")
    ap.add_argument("--iterations", type=int, default=5)
    ap.add_argument("--json", type=Path, default=None, help="Write every sample here.")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="vz-oci-bench-"))
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VZ_LINUX_", "VZ_OCI_"))}
        # A throw-away ~/.vz, but the machine's build cache (and its cached accelerator verdict).
        env.update(HOME=str(work / "home"), VZ_LINUX_CONTAINER_BUNDLE_DIR=str(args.bundle_dir.resolve()),
                   VZ_LINUX_CACHE_DIR=str(cache_root()))
        (work / "home").mkdir()
        os.environ.clear()
        os.environ.update(env)
        bundle = ensure_kernel_profile(KernelProfile.container)  # installs into the temp $HOME
        image = make_busybox_rootfs(work / "rootfs")
        vz = Path(sys.executable).parent / "vz"
        guest = BenchGuest("container", VmConfig.from_bundle(bundle.root))
        opts = BenchOptions(iterations=1, measure_rss=False)
        cfg = RuntimeConfig(linux_profile=KernelProfile.container)
        samples: dict[str, list[float]] = {}

        def add(name: str, seconds: float) -> None:
            samples.setdefault(name, []).append(seconds * 1000)

        for i in range(1, args.iterations + 1):
            add("boot_to_agent", boot_once(guest, i, opts).total_s)
            t0 = time.monotonic()
            p = subprocess.run([str(vz), "oci", "run", "--rm", "--kernel-profile", "container", str(image),
                                "--", "true"], env=env, capture_output=True, text=True, timeout=300)
            add("oci_run_cli", time.monotonic() - t0)
            if p.returncode != 0:
                print(f"vz oci run failed ({p.returncode}): {p.stderr.strip()}", file=sys.stderr)
                return 1
            timings: dict[str, float] = {}
            t0 = time.monotonic()
            code = run_foreground(cfg, ContainerRequest(image=str(image), command=("true",)), remove=True,
                                  on_stdout=lambda b: None, on_stderr=lambda b: None, timings=timings)
            add("oci_run_inprocess", time.monotonic() - t0)
            assert code == 0
            for name, seconds in timings.items():
                add(f"oci_run.{name}", seconds)
            add("container_start", timings["guest_prepare"] + timings["crun_run"])
            print(f"round {i}/{args.iterations} done", file=sys.stderr)

        info = host_info()
        print(f"# {args.iterations} rounds, interleaved; host: {json.dumps(info)}")
        for name, values in samples.items():
            print(f"{name:28s} median {statistics.median(values):8.1f} ms   "
                  f"min {min(values):8.1f} ms   max {max(values):8.1f} ms")
        med = {k: statistics.median(v) for k, v in samples.items()}
        print(f"{'oci_cli_minus_boot':28s} median {med['oci_run_cli'] - med['boot_to_agent']:8.1f} ms")
        if args.json:
            args.json.write_text(json.dumps({"host": info, "samples_ms": samples}, indent=2))
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
