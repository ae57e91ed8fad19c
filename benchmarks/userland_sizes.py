#!/usr/bin/env python3
"""Guest userland figures per arch: agent, BusyBox, crun and compressed initramfs sizes, the time
to write the initramfs, and crun's cold build time (recorded when the cached binary was built;
``--cold-crun`` rebuilds it into an empty cache to measure it now).

Usage: .venv/bin/python benchmarks/userland_sizes.py [--cold-crun] [--arch x86_64|arm64 ...]

Prints one named figure per line with its unit; the initramfs aim is < 1.5 MB compressed.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

from vz_linux.arch import Architecture
from vz_linux.build.agent import build_agent
from vz_linux.build.busybox import get_busybox
from vz_linux.build.crun import ensure_crun
from vz_linux.build.initramfs import InitramfsInputs, write_initramfs

INITRAMFS_AIM = 1_500_000


def figure(name: str, value: float, unit: str) -> None:
    shown = int(value) if float(value).is_integer() else value
    print(f"{name} {shown} {unit}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", action="append", type=Architecture.parse,
                    help="repeatable; default: x86_64 and arm64")
    ap.add_argument("--cold-crun", action="store_true", help="rebuild crun in an empty cache (minutes)")
    args = ap.parse_args()
    arches = args.arch or list(Architecture)
    print(f"# machine: {platform.node()} {platform.machine()} {os.cpu_count()} cpus, {platform.platform()}")
    for arch in arches:
        a = arch.value
        agent = build_agent(arch)
        busybox = get_busybox(arch)
        if args.cold_crun:
            with tempfile.TemporaryDirectory() as cache:
                os.environ["VZ_LINUX_CACHE_DIR"] = cache
                t = time.monotonic()
                crun = ensure_crun(arch)
                figure(f"crun_cold_build_{a}", round(time.monotonic() - t, 1), "s")
                crun_size = crun.path.stat().st_size
                del os.environ["VZ_LINUX_CACHE_DIR"]
        else:
            crun = ensure_crun(arch)
            crun_size = crun.path.stat().st_size
            if crun.build_seconds is not None:
                figure(f"crun_cold_build_{a}_recorded", crun.build_seconds, "s")
        with tempfile.TemporaryDirectory() as tmp:
            inputs = InitramfsInputs.default(busybox=busybox.path, agent=agent)
            t = time.monotonic()
            image = write_initramfs(inputs, Path(tmp) / "initramfs.img")
            write_s = time.monotonic() - t
            size = image.stat().st_size
        figure(f"agent_size_{a}", agent.stat().st_size, "bytes")
        figure(f"busybox_size_{a}", busybox.path.stat().st_size, "bytes")
        figure(f"crun_size_{a}", crun_size, "bytes")
        figure(f"initramfs_gz_size_{a}", size, "bytes")
        figure(f"initramfs_gz_size_{a}_vs_aim", round(100 * size / INITRAMFS_AIM, 1), "%")
        figure(f"initramfs_write_time_{a}", round(write_s * 1000, 1), "ms")


if __name__ == "__main__":
    main()
