"""Pick the accelerator: ``auto`` proves KVM works before using it, else TCG (docs/vm.md, "Accelerator").

The mere presence of ``/dev/kvm`` proves nothing: a host's KVM can exist and still run guests far
slower than native, and QEMU then hangs in early boot (docs/vm.md names such a host). So ``auto``
runs a real guest through the KVM API — a few bytes of real-mode code that count down a
16M-iteration loop and report through an ``out`` instruction — in a child process under a short
deadline. Natively that takes milliseconds; a broken or crawling KVM misses the deadline. The
verdict is cached per boot of the host (``/proc/sys/kernel/random/boot_id``), because KVM's health
does not change while the host runs.
"""

from __future__ import annotations

import ctypes
import enum
import fcntl
import json
import logging
import mmap
import os
import struct
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from ..errors import InvalidConfigError, VmError
from ..fsutil import write_atomic
from ..layout import cache_root
from ..run import libc, spawn
from .qemu import Accel

log = logging.getLogger(__name__)

KVM_DEVICE = Path("/dev/kvm")
PROBE_DEADLINE_SECS = 5.0
_PROBE_RESULT = 0x42

# ioctl numbers from <linux/kvm.h> (x86).
_KVM_GET_API_VERSION = 0xAE00
_KVM_CREATE_VM = 0xAE01
_KVM_GET_VCPU_MMAP_SIZE = 0xAE04
_KVM_CREATE_VCPU = 0xAE41
_KVM_SET_USER_MEMORY_REGION = 0x4020AE46
_KVM_RUN = 0xAE80
_KVM_SET_REGS = 0x4090AE82
_KVM_GET_SREGS = 0x8138AE83
_KVM_SET_SREGS = 0x4138AE84
_KVM_EXIT_IO = 2
_KVM_EXIT_HLT = 5

# Real mode at 0x1000: mov ecx,0x1000000; 1: dec ecx; jnz 1b; mov al,0x42; out 0x10,al; hlt
_GUEST_CODE = bytes.fromhex("66b90000000166 49 75fc b042 e610 f4".replace(" ", ""))
_GUEST_ADDR = 0x1000


class AccelChoice(enum.StrEnum):
    auto = "auto"
    kvm = "kvm"
    tcg = "tcg"

    @classmethod
    def parse(cls, name: str) -> AccelChoice:
        try:
            return cls(name)
        except ValueError:
            raise InvalidConfigError(f"unknown accelerator {name!r}; valid: auto, kvm, tcg") from None


@dataclass(frozen=True)
class AccelVerdict:
    accel: Accel
    reason: str  # why this one was chosen, shown to the user ("no /dev/kvm: using TCG")


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"


def _cache_file() -> Path:
    return cache_root() / "accel-verdict.json"


def kvm_smoke_test() -> None:
    """Run the tiny guest through the KVM API in *this* process; raise OSError/RuntimeError on failure.

    Called in a child process (``python -m vz_linux.vm.accel``) so a hang can be killed.
    """
    kvm = os.open(KVM_DEVICE, os.O_RDWR | os.O_CLOEXEC)
    if fcntl.ioctl(kvm, _KVM_GET_API_VERSION) != 12:
        raise RuntimeError("unexpected KVM API version")
    vm = fcntl.ioctl(kvm, _KVM_CREATE_VM, 0)
    mem = mmap.mmap(-1, 0x10000, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    mem[_GUEST_ADDR:_GUEST_ADDR + len(_GUEST_CODE)] = _GUEST_CODE
    addr = ctypes.addressof(ctypes.c_char.from_buffer(mem))
    region = struct.pack("=IIQQQ", 0, 0, 0, len(mem), addr)
    fcntl.ioctl(vm, _KVM_SET_USER_MEMORY_REGION, region)
    vcpu = fcntl.ioctl(vm, _KVM_CREATE_VCPU, 0)
    run_size = fcntl.ioctl(kvm, _KVM_GET_VCPU_MMAP_SIZE, 0)
    kvm_run = mmap.mmap(vcpu, run_size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    sregs = bytearray(312)
    fcntl.ioctl(vcpu, _KVM_GET_SREGS, sregs)
    struct.pack_into("=Q", sregs, 0, 0)  # cs.base
    struct.pack_into("=H", sregs, 12, 0)  # cs.selector
    fcntl.ioctl(vcpu, _KVM_SET_SREGS, bytes(sregs))
    regs = [0] * 18
    regs[16], regs[17] = _GUEST_ADDR, 0x2  # rip, rflags
    fcntl.ioctl(vcpu, _KVM_SET_REGS, struct.pack("=18Q", *regs))
    seen = None
    for _ in range(4):
        if libc().ioctl(vcpu, _KVM_RUN, 0) != 0:
            raise OSError(ctypes.get_errno(), "KVM_RUN failed")
        reason = struct.unpack_from("=I", kvm_run, 8)[0]
        if reason == _KVM_EXIT_IO:
            _direction, _size, port, _count, offset = struct.unpack_from("=BBHIQ", kvm_run, 32)
            if port == 0x10:
                seen = kvm_run[offset]
        elif reason == _KVM_EXIT_HLT:
            break
        else:
            raise RuntimeError(f"unexpected KVM exit reason {reason}")
    if seen != _PROBE_RESULT:
        raise RuntimeError("the probe guest did not report its result")


def probe_kvm(deadline: float = PROBE_DEADLINE_SECS) -> AccelVerdict:
    """Run :func:`kvm_smoke_test` in a child under ``deadline``; never raises."""
    if not KVM_DEVICE.exists():
        return AccelVerdict(Accel.tcg, "no /dev/kvm: using TCG")
    if not os.access(KVM_DEVICE, os.R_OK | os.W_OK):
        return AccelVerdict(Accel.tcg, "/dev/kvm is not accessible: using TCG")
    with spawn([sys.executable, "-m", "vz_linux.vm.accel"], stderr=subprocess.PIPE) as proc:
        try:
            _, err = proc.communicate(timeout=deadline)
        except subprocess.TimeoutExpired:
            return AccelVerdict(Accel.tcg, f"KVM probe guest did not finish within {deadline:.0f}s: using TCG")
    if proc.returncode != 0:
        last = (err or b"").decode(errors="replace").strip().splitlines()[-1:] or ["failed"]
        return AccelVerdict(Accel.tcg, f"KVM probe failed ({last[0]}): using TCG")
    return AccelVerdict(Accel.kvm, "KVM probe guest ran at native speed: using KVM")


def resolve_accel(choice: AccelChoice | str = AccelChoice.auto, *, use_cache: bool = True) -> AccelVerdict:
    """``kvm``/``tcg`` as asked; ``auto``: the cached verdict for this host boot, else a fresh probe."""
    choice = AccelChoice.parse(choice) if isinstance(choice, str) else choice
    if choice is AccelChoice.tcg:
        return AccelVerdict(Accel.tcg, "TCG requested")
    if choice is AccelChoice.kvm:
        if not KVM_DEVICE.exists():
            raise VmError("accelerator kvm requested but /dev/kvm does not exist", hint="use --accel tcg or auto")
        return AccelVerdict(Accel.kvm, "KVM requested")
    boot_id = _boot_id()
    cache = _cache_file()
    if use_cache:
        try:
            data = json.loads(cache.read_text())
            if data.get("boot_id") == boot_id:
                return AccelVerdict(Accel(data["accel"]), str(data["reason"]) + " (cached for this host boot)")
        except (OSError, ValueError, KeyError):
            pass
    verdict = probe_kvm()
    log.info("accelerator: %s", verdict.reason)
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(cache, json.dumps({"boot_id": boot_id, "accel": verdict.accel.value,
                                        "reason": verdict.reason}).encode())
    except OSError:
        pass  # a cache we cannot write only costs another probe
    return verdict


if __name__ == "__main__":
    try:
        kvm_smoke_test()
    except (OSError, RuntimeError) as e:
        print(f"{e}", file=sys.stderr)
        sys.exit(1)
