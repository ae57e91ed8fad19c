#!/usr/bin/env python3
"""Kernel variants of a container bundle (x86_64 unless --arch), booted interleaved in one run (TCG):

  6.12           the 6.12 container kernel (default pin) with the bundle's initramfs
  6.1            the cached 6.1 container kernel with the same initramfs
  6.12 +<arg>    (--kspp) the 6.12 kernel with one KSPP command-line setting added
  6.12 +adopted  (--kspp) with qemu.HARDENING_CMDLINE, the settings every boot now gets
  LABEL          (--also LABEL=KEY, repeatable) the cached kernel whose key starts with KEY, or the
                 kernel cache entry directory KEY (e.g. a hardening A/B config built elsewhere)
Every other guest boots without HARDENING_CMDLINE, so each setting is measured on its own;
--hardening-cmdline boots every guest with it (as `vz-linux run` does). --only-also boots only the
--also kernels (the first is the baseline): the KSPP Kconfig groups of docs/profiles.md, e.g.

  .venv/bin/python benchmarks/kernel_variants.py --arch arm64 --only-also --hardening-cmdline \
      --iterations 5 --also base=7e30e533 --also hardened=/tmp/cache/kernels/0a1b2c...

Prints named figures (`name value unit`): boot→agent p50/p95, kernel phase p50, QEMU RSS at
agent-ready p50, stripped vmlinux size and compile time (from the cache's kernel.json) per kernel,
and an object-size estimate of what device_mapper + dm_crypt add to the 6.12 image (the sizes
of their objects in the 6.12 build dir: no third compile).

  .venv/bin/python benchmarks/kernel_variants.py --bundle-dir linux/out/container --iterations 5 --kspp
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from vz_linux.arch import Architecture
from vz_linux.build.kernel import build_dir
from vz_linux.layout import cache_root, default_bundle_dir
from vz_linux.profiles import KernelProfile
from vz_linux.run import run
from vz_linux.vm.bench import BenchGuest, BenchOptions, GuestResult, Summary, boot_once, host_info, interleave
from vz_linux.vm.linux_vm import VmConfig

KSPP_CMDLINE = ("init_on_alloc=1", "slab_nomerge", "page_alloc.shuffle=1", "randomize_kstack_offset=on",
                "init_on_free=1")
# Objects that BLK_DEV_DM, DM_CRYPT, CRYPTO_AES and CRYPTO_XTS (and what they select) add.
DM_OBJECTS = ("drivers/md", "crypto/aes_generic.o", "crypto/xts.o", "crypto/ecb.o", "crypto/cbc.o",
              "crypto/essiv.o", "crypto/authenc.o", "lib/crypto/aes.o")


def figure(name: str, value: float | int | str, unit: str) -> None:
    print(f"{name} {value} {unit}", flush=True)


def cached_kernel(series: str, arch: Architecture) -> tuple[Path, dict[str, object]]:
    """The newest container kernel of ``series`` for ``arch`` in the kernel cache, and its kernel.json.
    Prints every cached entry's compile time: they depend on the machine's load at the time."""
    found = []
    for meta_path in (cache_root() / "kernels").glob("*/kernel.json"):
        meta = json.loads(meta_path.read_text())
        if (meta.get("arch") == arch.value and meta.get("profile") == "container"
                and str(meta.get("version", "")).startswith(series + ".")):
            found.append((meta_path.stat().st_mtime, meta_path.parent / image_name(arch), meta))
            print(f"# cached {series} {str(meta.get('key'))[:12]}: compile {meta.get('compile_seconds')} s")
    if not found:
        sys.exit(f"no cached container {arch} kernel of Linux {series}: build it first")
    _, image, meta = max(found, key=lambda f: f[0])
    return image, meta


def image_name(arch: Architecture) -> str:
    return Path(arch.kernel_image_path).name  # "vmlinux" / "Image"


def also_kernel(key: str, arch: Architecture) -> tuple[Path, dict[str, object]]:
    """``--also``'s kernel: a cache entry directory, or the entry whose key starts with ``key``."""
    entry = Path(key)
    if not entry.is_dir():
        matches = list((cache_root() / "kernels").glob(f"{key}*"))
        if len(matches) != 1:
            sys.exit(f"--also {key}: {len(matches)} cached kernels match (need exactly one)")
        entry = matches[0]
    return entry / image_name(arch), json.loads((entry / "kernel.json").read_text())


def stripped_size(path: Path) -> int:
    """The ELF vmlinux without symbols; an arm64 ``Image`` is a raw binary (its size as it is)."""
    if path.read_bytes()[:4] != b"\x7fELF":
        return path.stat().st_size
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "vmlinux"
        run(["strip", "-o", str(out), str(path)])
        return out.stat().st_size


def dm_object_bytes(builddir: Path) -> int:
    """text + data + bss of the device-mapper and dm-crypt objects in a compiled build dir."""
    objs: list[Path] = []
    for rel in DM_OBJECTS:
        p = builddir / rel
        objs += sorted(o for o in p.glob("*.o") if o.name != "built-in.o") if p.is_dir() else [p] if p.exists() else []
    out = run(["size", "-t", *map(str, objs)]).stdout.decode().splitlines()
    return int(out[-1].split()[3])  # the TOTALS line's dec column


def fmt(s: Summary, scale: float = 1000.0) -> tuple[float, float]:
    return round(s.median * scale, 1), round(s.p95 * scale, 1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", type=Architecture.parse, default=Architecture.x86_64)
    ap.add_argument("--bundle-dir", type=Path, help="its initramfs is booted (default: the arch's container bundle)")
    ap.add_argument("--iterations", type=int, default=5)
    ap.add_argument("--timeout-secs", type=float, default=90.0)
    ap.add_argument("--kspp", action="store_true", help="also each KSPP command-line setting on 6.12")
    ap.add_argument("--also", action="append", default=[], metavar="LABEL=KEY",
                    help="also boot the cached kernel whose key starts with KEY, or the cache entry dir KEY")
    ap.add_argument("--also-cmdline", action="append", default=[], metavar="LABEL=WORD",
                    help="boot --also LABEL's kernel once more as 'LABEL WORD' with WORD on its command line")
    ap.add_argument("--only-also", action="store_true", help="boot only the --also kernels (not 6.12 / 6.1)")
    ap.add_argument("--hardening-cmdline", action="store_true",
                    help="boot every guest with qemu.HARDENING_CMDLINE (the default of real runs)")
    args = ap.parse_args()
    arch: Architecture = args.arch
    bundle_dir: Path = args.bundle_dir or default_bundle_dir(KernelProfile.container, arch)
    if args.only_also and (not args.also or args.kspp):
        ap.error("--only-also needs --also and excludes --kspp")
    print(f"# machine: {json.dumps(host_info())}")
    kernels = {} if args.only_also else {s: cached_kernel(s, arch) for s in ("6.12", "6.1")}
    also = [(label, also_kernel(key, arch)) for label, _, key in (a.partition("=") for a in args.also)]
    first = also[0][1][0] if args.only_also else kernels["6.12"][0]
    base = VmConfig(kernel=first, initramfs=bundle_dir / "initramfs.img", arch=arch, accel="tcg",
                    memory_mib=256, hardening_cmdline=args.hardening_cmdline)
    guests = [] if args.only_also else [BenchGuest("6.12", base),
                                        BenchGuest("6.1", replace(base, kernel=kernels["6.1"][0]))]
    if args.kspp:
        guests += [BenchGuest(f"6.12 +{a}", replace(base, cmdline_extra=(a,))) for a in KSPP_CMDLINE]
        guests.append(BenchGuest("6.12 +adopted", replace(base, hardening_cmdline=True)))
    for label, (image, meta) in also:
        kernels[label] = (image, meta)
        guests.append(BenchGuest(label, replace(base, kernel=image)))
    for label, _, word in (a.partition("=") for a in args.also_cmdline):
        image = kernels[label][0]
        guests.append(BenchGuest(f"{label} +{word}", replace(base, kernel=image, cmdline_extra=(word,))))
    opts = BenchOptions(iterations=args.iterations, timeout_secs=args.timeout_secs)
    results = {g.label: GuestResult(g.label) for g in guests}
    started = time.time()
    for g, i in interleave(guests, args.iterations):
        s = boot_once(g, i, opts)
        results[g.label].samples.append(s)
        print(f"# {g.label:>34} #{i:<2} {s.total_s * 1000:6.0f} ms  rss {(s.rss_bytes or 0) / 2**20:.0f} MiB",
              flush=True)
    print(f"# {len(guests)} guests x {args.iterations} boots interleaved in {time.time() - started:.0f} s")
    for label, r in results.items():
        name = label.replace(" +", "_").replace(".", "_").replace("=", "_")
        p50, p95 = fmt(r.total())
        figure(f"boot_to_agent_p50[{name}]", p50, "ms")
        figure(f"boot_to_agent_p95[{name}]", p95, "ms")
        if (k := r.phase("kernel")) is not None:
            figure(f"kernel_phase_p50[{name}]", fmt(k)[0], "ms")
        if (rss := r.rss()) is not None:
            figure(f"rss_p50[{name}]", round(rss.median / 2**20, 1), "MiB")
    for series, (image, meta) in kernels.items():
        name = series.replace(".", "_").replace(" ", "_")
        figure(f"vmlinux_stripped[{name}]", stripped_size(image), "bytes")
        figure(f"compile_seconds[{name}]", meta.get("compile_seconds", "?"), "s")
        figure(f"cache_key[{name}]", str(meta.get("key", "?"))[:12], "-")
    builddir = build_dir(KernelProfile.container, arch, "6.12")
    if not args.only_also and arch is Architecture.x86_64:
        figure("dm_dm_crypt_object_bytes_estimate[6_12]", dm_object_bytes(builddir), "bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
