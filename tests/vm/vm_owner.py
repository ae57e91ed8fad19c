"""A host process that owns a LinuxVm, for the lifetime tests: python -m tests.vm.vm_owner MODE KERNEL INITRAMFS SHARE.

Prints "PIDS <qemu> <virtiofsd>" once the VM runs, then, by MODE:
  wait       sleep until signalled (the test sends SIGINT / SIGTERM / SIGKILL);
  exception  raise RuntimeError inside the `with LinuxVm` block;
  timeout    wait_for_agent(3) on a guest that never starts an agent.
"""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

from vz_linux.vm.linux_vm import LinuxVm, VmConfig, VmShare


def main() -> None:
    mode, kernel, initramfs, share = sys.argv[1:5]
    # Behave like an interactive program even when started from a background shell job, which
    # inherits SIGINT as *ignored* (Python then keeps it ignored): Ctrl-C must raise KeyboardInterrupt.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    cfg = VmConfig(kernel=Path(kernel), initramfs=Path(initramfs), accel="tcg",
                   shares=(VmShare("vz-mount-0", Path(share)),))
    with LinuxVm(cfg) as vm:
        fsd = next(iter(p for p in _children(vm.pid)), 0)
        print(f"PIDS {vm.pid} {fsd}", flush=True)
        sys.stdin.readline()  # the test checks both processes are alive, then says go
        if mode == "exception":
            raise RuntimeError("boom")
        if mode == "timeout":
            vm.wait_for_agent(3)
        while True:
            time.sleep(1)


def _children(exclude: int | None) -> list[int]:
    import os

    me = os.getpid()
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != exclude:
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                cmd = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if int(fields[1]) == me and b"virtiofsd" in cmd:
                out.append(int(entry.name))
    return out


if __name__ == "__main__":
    main()
