"""No QEMU or virtiofsd outlives the process that owns a LinuxVm: exception, timeout, SIGINT,
SIGTERM, SIGKILL to the owner (a real host process running tests/vm/vm_owner.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vz_linux.errors import GuestBootError
from vz_linux.vm.linux_vm import LinuxVm, VmConfig

from .procs import alive

pytestmark = [pytest.mark.vm, pytest.mark.kernel]
TOP = Path(__file__).resolve().parents[2]
HANG = "#!/bin/sh\nexec /bin/busybox sleep 100000\n"


def _owner(mode: str, kernel: Path, initramfs: Path, share: Path) -> tuple[subprocess.Popen[str], int, int]:
    proc = subprocess.Popen([sys.executable, "-m", "tests.vm.vm_owner", mode, str(kernel), str(initramfs),
                             str(share)], cwd=TOP, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdin is not None
    line = proc.stdout.readline()
    assert line.startswith("PIDS "), (line, proc.stderr.read() if proc.stderr else "")
    qemu, fsd = (int(x) for x in line.split()[1:3])
    assert alive(qemu) and fsd and alive(fsd)
    proc.stdin.write("go\n")
    proc.stdin.flush()
    return proc, qemu, fsd


def _gone(*pids: int, within: float = 20.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not any(alive(p) for p in pids):
            return True
        time.sleep(0.1)
    return False


@pytest.fixture
def hang_guest(container_bundle: Path, tiny_initramfs, tmp_path: Path):
    share = tmp_path / "share"
    share.mkdir()
    return container_bundle / "vmlinux", tiny_initramfs(HANG), share


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_signal_to_owner_leaves_nothing(hang_guest, sig: signal.Signals) -> None:
    proc, qemu, fsd = _owner("wait", *hang_guest)
    os.kill(proc.pid, sig)
    try:
        proc.wait(60)
    finally:
        if proc.poll() is None:  # the owner ignored the signal: a failure, but leave no processes behind
            proc.kill()
            proc.wait()
    assert _gone(qemu, fsd), f"after {sig.name}: qemu alive={alive(qemu)} virtiofsd alive={alive(fsd)}"


@pytest.mark.parametrize("mode", ["exception", "timeout"])
def test_exception_and_timeout_leave_nothing(hang_guest, mode: str) -> None:
    proc, qemu, fsd = _owner(mode, *hang_guest)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert ("RuntimeError: boom" if mode == "exception" else "GuestBootError") in err
    assert _gone(qemu, fsd, within=5)


def test_hang_before_agent_is_reported_within_timeout(hang_guest) -> None:
    kernel, initramfs, _ = hang_guest
    with LinuxVm(VmConfig(kernel=kernel, initramfs=initramfs, accel="tcg")) as vm:
        with pytest.raises(GuestBootError, match="did not answer within 8s"):
            vm.wait_for_agent(8)
        pid = vm.pid
    assert pid is not None and not alive(pid)
