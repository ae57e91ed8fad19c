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

from .procs import alive, cmdline

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
        t0 = time.monotonic()
        with pytest.raises(GuestBootError, match="did not answer within 8s"):
            vm.wait_for_agent(8)
        elapsed = time.monotonic() - t0
        pid = vm.pid
    # It waited the whole timeout (the guest runs, it just never answers) and no hang beyond it.
    assert 8 <= elapsed < 8 + 30, elapsed
    assert pid is not None and not alive(pid)


def _qemu_children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid and "qemu-system" in (cmdline(int(stat.parent.name)) or ""):
            out.append(int(stat.parent.name))
    return out


def test_sigterm_to_the_cli_leaves_no_qemu(container_bundle: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", "from vz_linux.cli.main import main; main()", "run",
                             "--bundle-dir", str(container_bundle), "--accel", "tcg", "--",
                             "sh", "-c", "echo in-guest; exec sleep 100000"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "in-guest\n"
        [qemu] = _qemu_children(proc.pid)
        os.kill(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # SIGTERM unwinds like Ctrl-C (cli/common.py): exit 130, one line, QEMU stopped by the CLI itself.
    assert proc.returncode == 130, err
    assert err.strip().splitlines() == ["vz-linux: interrupted"]
    assert _gone(qemu, within=5), f"QEMU {qemu} outlived the CLI"
