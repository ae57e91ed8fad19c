"""The init script and udhcpc.script: syntax, their pieces, and init run for real as the PID 1 of a
PID namespace in a chroot of the extracted initramfs (no VM needed for what it does up to the
agent; the virtiofs paths need a VM and are covered by the boot tests)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from vz_linux.build.initramfs import InitramfsInputs, write_initramfs
from vz_linux.layout import source_checkout

from .userland_fixtures import extract

top = source_checkout()
assert top is not None
INIT = top / "linux" / "initramfs" / "init"
UDHCPC_SCRIPT = top / "linux" / "initramfs" / "etc" / "udhcpc.script"


def sh(script: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["busybox", "sh", "-c", script], capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", **env})


@pytest.mark.parametrize("script", [INIT, UDHCPC_SCRIPT], ids=lambda p: p.name)
def test_scripts_parse(script: Path) -> None:
    proc = subprocess.run(["busybox", "sh", "-n", str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert os.access(script, os.X_OK)


def test_cmdline_parsing(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    proc = sh(
        f'VZ_INIT_SOURCE_ONLY=1 . {INIT}; '
        f'parse_cmdline console=ttyS0 vz.mount.0=/data vz.mount.12=/srv/x vz.mount.x=/bad '
        f'"vz.mount.3=/\\$(touch {marker})" vz.hostname=box; '
        'echo "q=$QUIET h=$HOSTNAME_WANTED 0=$(mount_path 0) 12=$(mount_path 12) 1=$(mount_path 1) 3=$VZ_MOUNT_3"'
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.splitlines()
    assert out[-1] == f"q=0 h=box 0=/data 12=/srv/x 1=/mnt/vz-mount-1 3=/$(touch {marker})"
    assert "[vz-init] ignoring vz.mount.x=/bad: share number must be digits" in out
    assert not marker.exists()  # the value is data, never evaluated


@pytest.mark.parametrize(("word", "device"), [("root=/dev/vda", "/dev/vda"), ("root=/dev/vdc", "/dev/vdc"),
                                               ("root=/dev/sda", ""), ("root=/dev/vda1", ""),
                                               ("root=/dev/vd$(reboot)", ""), ("root=", "")])
def test_root_device_parsing(word: str, device: str) -> None:
    """Only a whole virtio-blk disk is a root: anything else leaves the initramfs root in place."""
    proc = sh(f'VZ_INIT_SOURCE_ONLY=1 . {INIT}; parse_cmdline quiet \'{word}\'; echo "dev=$ROOT_DEV"')
    assert proc.returncode == 0 and proc.stdout.splitlines()[-1] == f"dev={device}", proc.stderr


def test_quiet_silences_log() -> None:
    proc = sh(f'VZ_INIT_SOURCE_ONLY=1 . {INIT}; log before; parse_cmdline quiet; log after')
    assert proc.stdout == "[vz-init] before\n"


def test_udhcpc_script_configures_interface(tmp_path: Path) -> None:
    resolv = tmp_path / "resolv.conf"
    resolv.symlink_to("/nonexistent/stub-resolv.conf")  # replaced, never followed
    proc = subprocess.run(
        ["unshare", "-n", "busybox", "sh", "-c",
         f"ip link add eth0 type veth peer name peer0 && sh {UDHCPC_SCRIPT} bound && ip -4 addr show eth0"
         " && ip -4 route"],
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "interface": "eth0", "ip": "10.0.2.15", "mask": "24",
             "router": "10.0.2.2", "dns": "10.0.2.3 10.0.2.4", "domain": "example.test",
             "RESOLV_CONF": str(resolv)},
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "inet 10.0.2.15/24" in proc.stdout
    assert "default via 10.0.2.2 dev eth0" in proc.stdout
    assert not resolv.is_symlink()
    assert resolv.read_text() == "search example.test\nnameserver 10.0.2.3\nnameserver 10.0.2.4\n"


# --- init as PID 1 of a namespace -----------------------------------------------------------------
def children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(p) for p in text.split()]


def wait_for(cond: object, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(cond) and cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def exe_of(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return ""


@pytest.fixture
def init_ns(host_inputs: InitramfsInputs, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], int, Path]]:
    tree = extract(write_initramfs(host_inputs, tmp_path / "i.img"), tmp_path / "root")
    proc = subprocess.Popen(
        ["unshare", "--pid", "--kill-child", "--mount", "--uts", "--ipc", "--net",
         "chroot", str(tree), "/init"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        wait_for(lambda: bool(children(proc.pid)), "init to start")
        init_pid = children(proc.pid)[0]
        yield proc, init_pid, tree
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


def agent_children(init_pid: int, tree: Path) -> list[int]:
    return [c for c in children(init_pid) if exe_of(c) == str(tree / "sbin" / "vz-agent")]


def test_init_mounts_and_starts_agent_as_child(init_ns: tuple[subprocess.Popen[bytes], int, Path]) -> None:
    _proc, init_pid, tree = init_ns
    wait_for(lambda: bool(agent_children(init_pid, tree)), "the agent to start")
    mounts = {(line.split()[4], line.split(" - ")[1].split()[0])
              for line in Path(f"/proc/{init_pid}/mountinfo").read_text().splitlines()}
    for point, fstype in [("/proc", "proc"), ("/sys", "sysfs"), ("/dev", "devtmpfs"), ("/dev/pts", "devpts"),
                          ("/dev/shm", "tmpfs"), ("/tmp", "tmpfs"), ("/run", "tmpfs")]:
        assert (str(tree) + point, fstype) in mounts or (point, fstype) in mounts, (point, mounts)
    host = subprocess.run(["nsenter", "-t", str(init_pid), "-u", "hostname"], capture_output=True, text=True,
                          check=True).stdout.strip()
    assert host == "vz"
    # init is still the shell, not exec'd into the agent.
    assert exe_of(init_pid).endswith("/bin/busybox")


def test_init_reaps_orphans(init_ns: tuple[subprocess.Popen[bytes], int, Path]) -> None:
    _proc, init_pid, tree = init_ns
    wait_for(lambda: bool(agent_children(init_pid, tree)), "the agent to start")
    # Two orphans that run until the test opens the gate (in init's /tmp), so they are surely alive
    # when we look for them under init, whatever the load.
    wait_loop = "while [ ! -e /tmp/gate ]; do /bin/sleep 0.05; done"
    subprocess.run(["nsenter", "-t", str(init_pid), "-p", "-m", "-r", "-w", "--", "/bin/sh", "-c",
                    f"/bin/sh -c '{wait_loop}' & /bin/sh -c '{wait_loop}' & exit 0"], check=True, timeout=60)
    agents = set(agent_children(init_pid, tree))
    orphans = [c for c in children(init_pid) if c not in agents]
    assert len(orphans) == 2, "both waiters should have been reparented to init"
    Path(f"/proc/{init_pid}/root/tmp/gate").write_text("")
    wait_for(lambda: not any(Path(f"/proc/{p}").exists() for p in orphans), "init to reap the orphans")


def test_init_restarts_agent_then_powers_off(init_ns: tuple[subprocess.Popen[bytes], int, Path]) -> None:
    proc, init_pid, tree = init_ns
    seen: set[int] = set()
    for _ in range(4):  # AGENT_RESTARTS = 3 restarts, then power off
        wait_for(lambda: bool(set(agent_children(init_pid, tree)) - seen), "a (new) agent")
        pid = (set(agent_children(init_pid, tree)) - seen).pop()
        seen.add(pid)
        os.kill(pid, signal.SIGKILL)
    # reboot -f in a PID namespace ends its init: the namespace, and unshare, exit.
    proc.wait(timeout=60)
    assert len(seen) == 4
