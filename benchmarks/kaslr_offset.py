#!/usr/bin/env python3
"""Is the kernel's KASLR live? Boot a kernel N times with no root and no initramfs: it panics
("VFS: Unable to mount root fs") and its panic notifier prints "Kernel Offset: 0x… from 0x…", or
"Kernel Offset: disabled". Different offsets across boots = KASLR works (docs/profiles.md, "Hardening").

  # x86_64: Debian's cloud kernel (RANDOMIZE_BASE=y) as a bzImage (the decompressor picks the
  # offset) vs its extracted ELF vmlinux booted through the PVH entry (no decompressor):
  .venv/bin/python benchmarks/kaslr_offset.py --debian-x86 --boots 3
  # any kernel image (e.g. a cache entry's), for its arch:
  .venv/bin/python benchmarks/kaslr_offset.py --arch arm64 --kernel ~/.cache/vz-linux/kernels/KEY/Image

Prints `kaslr_distinct_offsets[LABEL] N count` per kernel (1 = fixed; 0 = "disabled").
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks.kernel_build

from vz_linux.arch import Architecture
from vz_linux.errors import CommandFailedError
from vz_linux.run import run
from vz_linux.vm.qemu import QemuVm

_OFFSET = re.compile(rb"Kernel Offset: (disabled|0x[0-9a-f]+)")


def offset(vm: QemuVm, timeout: float) -> str:
    """One boot to the panic; the offset it prints ("disabled", or "?" when none was printed)."""
    try:
        run(vm.argv(), check=False, timeout=timeout)
    except CommandFailedError:
        return "timeout"
    assert vm.serial_log is not None
    m = _OFFSET.search(vm.serial_log.read_bytes())
    return m[1].decode() if m else "?"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kernel", action="append", default=[], type=Path, help="a kernel image (repeatable)")
    ap.add_argument("--arch", type=Architecture.parse, default=Architecture.x86_64)
    ap.add_argument("--debian-x86", action="store_true",
                    help="Debian's cloud kernel: bzImage (machine pc) vs its ELF vmlinux (PVH, microvm)")
    ap.add_argument("--boots", type=int, default=3)
    ap.add_argument("--timeout-secs", type=float, default=120.0)
    args = ap.parse_args()
    arch: Architecture = args.arch
    # (label, image, machine): a bzImage needs the pc machine's Linux boot protocol.
    kernels: list[tuple[str, Path, str | None]] = [(k.name, k, None) for k in args.kernel]
    if args.debian_x86:
        from benchmarks.kernel_build import debian_cloud_kernel

        bzimage, vmlinux = debian_cloud_kernel()
        arch = Architecture.x86_64
        kernels += [("debian_bzImage", bzimage, "pc"), ("debian_vmlinux_pvh", vmlinux, None)]
    if not kernels:
        ap.error("name a --kernel or --debian-x86")
    with tempfile.TemporaryDirectory(prefix="kaslr-") as tmp:
        for label, image, machine in kernels:
            seen = []
            for i in range(args.boots):
                log = Path(tmp) / f"{label}-{i}.log"
                vm = QemuVm(arch=arch, kernel=image, machine=machine, serial_log=log, hvc_console=False,
                            fast_cmdline=False, cmdline_extra=("panic=-1",))
                seen.append(offset(vm, args.timeout_secs))
            print(f"# {label}: {' '.join(seen)}", flush=True)
            fixed = {o for o in seen if o.startswith("0x")}
            print(f"kaslr_distinct_offsets[{label}] {len(fixed)} count", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
