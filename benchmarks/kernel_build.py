#!/usr/bin/env python3
"""Kernel-build figures: compile and cache-hit wall times, `vz-linux config` per profile,
and kernel sizes next to Debian's linux-image-cloud-amd64.

    .venv/bin/python benchmarks/kernel_build.py            # uses what the cache holds
    .venv/bin/python benchmarks/kernel_build.py --cold     # also a cold container x86_64 compile
                                                            # in a fresh build dir (~10+ min)

Every figure is printed as `name value unit`, with the machine it ran on.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from vz_linux.arch import Architecture
from vz_linux.build import kernel_cache
from vz_linux.build.kernel import compile_kernel
from vz_linux.build.pipeline import config_report, configure, kernel_cache_key
from vz_linux.build.reproducible import build_epoch
from vz_linux.build.sources import SourceSpec, acquire_source, select_pin
from vz_linux.layout import cache_root
from vz_linux.profiles import KernelProfile
from vz_linux.run import run

VZ_LINUX = Path(sys.executable).parent / "vz-linux"


def figure(name: str, value: float | int | str, unit: str) -> None:
    print(f"{name} {value} {unit}", flush=True)


def timed(argv: list[str]) -> float:
    start = time.monotonic()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.monotonic() - start


def size_text(path: Path) -> int:
    """The `text` column of size(1) (Berkeley format: code + read-only data)."""
    out = run(["size", str(path)]).stdout.decode()
    return int(out.splitlines()[1].split()[0])


def stripped_size(path: Path) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "vmlinux"
        run(["strip", "-o", str(copy), str(path)])
        return copy.stat().st_size


def cached_image(profile: KernelProfile, arch: Architecture) -> tuple[Path, dict[str, object]] | None:
    """The cache entry of (profile, arch) for the current fragments, if it was built."""
    report = config_report(profile, arch)
    key = kernel_cache_key(report, select_pin())
    hit = kernel_cache.lookup(key, arch)
    if hit is None:
        return None
    return hit.image, json.loads((hit.dir / "kernel.json").read_text())


def debian_cloud_kernel() -> tuple[Path, Path]:
    """(bzImage, extracted vmlinux) of Debian's linux-image-cloud-amd64, fetched with apt into the cache."""
    work = cache_root() / "bench" / "debian-cloud"
    work.mkdir(parents=True, exist_ok=True)
    debs = sorted(work.glob("linux-image-*-cloud-amd64_*.deb"))
    if not debs:
        deps = run(["apt-cache", "depends", "linux-image-cloud-amd64"]).stdout.decode()
        pkg = next(line.split()[-1] for line in deps.splitlines()
                   if "Depends:" in line and "linux-image-6" in line)
        run(["apt-get", "download", pkg], cwd=work)
        debs = sorted(work.glob("linux-image-*-cloud-amd64_*.deb"))
    root = work / "root"
    if not root.is_dir():
        run(["dpkg-deb", "-x", str(debs[-1]), str(root)])
    bzimage = sorted((root / "boot").glob("vmlinuz-*"))[-1]
    vmlinux = work / "vmlinux"
    if not vmlinux.is_file():
        tree = acquire_source(SourceSpec()).tree
        with open(vmlinux, "wb") as out:
            subprocess.run([str(tree / "scripts" / "extract-vmlinux"), str(bzimage)], stdout=out, check=True)
    return bzimage, vmlinux


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cold", action="store_true", help="run a cold container x86_64 compile (fresh build dir)")
    args = ap.parse_args()
    print(f"# machine: {platform.node()} {platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}")

    x86 = Architecture.x86_64
    if args.cold:
        source = acquire_source(SourceSpec())
        report = config_report(KernelProfile.container, x86)
        with tempfile.TemporaryDirectory(dir=cache_root()) as tmp:
            result = compile_kernel(source, report.resolved.config_text, KernelProfile.container, x86,
                                    epoch=build_epoch(), builddir=Path(tmp) / "build", nice=10)
        figure("cold_compile_container_x86_64", round(result.seconds, 1), "s")
        figure("cold_compile_container_x86_64_objects", result.objects, "objects")

    source = acquire_source(SourceSpec())
    for profile in KernelProfile:
        start = time.monotonic()
        configure(profile, x86, source, memoize=False)  # the kernel's own baseline + olddefconfig
        figure(f"config_fresh_{profile.value}_x86_64", round(time.monotonic() - start, 2), "s")
        t = timed([str(VZ_LINUX), "config", "--profile", profile.value, "--arch", "x86_64"])
        figure(f"config_cli_{profile.value}_x86_64", round(t, 2), "s")  # memoized resolution

    for profile in KernelProfile:
        for arch in Architecture:
            entry = cached_image(profile, arch)
            if entry is None:
                print(f"# {profile}/{arch}: not in the cache (build it first)")
                continue
            image, meta = entry
            if meta.get("objects", 0) and int(str(meta["objects"])) > 200:
                figure(f"recorded_compile_{profile.value}_{arch.value}", str(meta.get("compile_seconds", "?")), "s")
            name = f"{profile.value}_{arch.value}"
            figure(f"size_{name}_image", image.stat().st_size, "bytes")
            if arch is x86:
                figure(f"size_{name}_vmlinux_stripped", stripped_size(image), "bytes")
                figure(f"size_{name}_text", size_text(image), "bytes")

    # Cache hit: the whole `vz-linux build --kernel-only` (source check, config, key, copy).
    if cached_image(KernelProfile.container, x86) is not None:
        with tempfile.TemporaryDirectory() as tmp:
            t = timed([str(VZ_LINUX), "build", "--profile", "container", "--arch", "x86_64", "--kernel-only",
                       "--out", str(Path(tmp) / "out")])
        figure("cache_hit_build_container_x86_64_kernel_only", round(t, 2), "s")

    bzimage, vmlinux = debian_cloud_kernel()
    figure("size_debian_cloud_amd64_bzImage", bzimage.stat().st_size, "bytes")
    figure("size_debian_cloud_amd64_vmlinux", vmlinux.stat().st_size, "bytes")
    figure("size_debian_cloud_amd64_vmlinux_stripped", stripped_size(vmlinux), "bytes")
    figure("size_debian_cloud_amd64_text", size_text(vmlinux), "bytes")
    modules = bzimage.parent.parent / "lib" / "modules"
    total = sum(p.stat().st_size for p in modules.rglob("*.ko")) if modules.is_dir() else 0
    figure("size_debian_cloud_amd64_modules", total, "bytes")


if __name__ == "__main__":
    main()
