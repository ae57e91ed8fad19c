"""init inside a real guest (TCG): the overlay over the rootfs share, vz-mount-N shares, the agent
as a child of PID 1, the fallback to the initramfs, and `quiet`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from vz_linux.arch import Architecture
from vz_linux.profiles import KernelProfile
from vz_linux.vm.linux_vm import LinuxVm, VmConfig, VmShare

pytestmark = [pytest.mark.vm, pytest.mark.kernel, pytest.mark.slow]


@pytest.fixture(scope="module")
def bundle(built_bundle: Callable[..., Path]) -> Path:
    return Path(built_bundle(KernelProfile.container, Architecture.x86_64))


def test_overlay_root_shares_and_agent(bundle: Path, tmp_path: Path) -> None:
    # A rootfs without any shell: the agent and BusyBox come from the initramfs.
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "marker").write_text("rootfs 7f3a\n")
    data, extra = tmp_path / "data", tmp_path / "extra"
    data.mkdir()
    extra.mkdir()
    (data / "in-data").write_text("host data\n")
    (extra / "in-extra").write_text("host extra\n")
    cfg = VmConfig.from_bundle(bundle, accel="tcg", rootfs=root,
                               shares=(VmShare("vz-mount-0", data), VmShare("vz-mount-1", extra)),
                               cmdline_extra=("vz.mount.0=/data", "vz.hostname=h4test"))
    script = ("cat /etc/marker; grep -c '^overlay / overlay' /proc/mounts; cat /data/in-data;"
              " cat /mnt/vz-mount-1/in-extra; hostname; tr '\\0' ' ' < /proc/1/cmdline; echo;"
              " echo guest > /etc/written-in-guest; echo guest > /data/from-guest; ls /sbin/vz-agent")
    with LinuxVm(cfg) as vm:
        vm.wait_for_agent(180)
        r = vm.exec_collect(["/run/vz/bin/sh", "-c", script], timeout=60)
        ppid = vm.exec_collect(["/run/vz/bin/sh", "-c", "grep PPid /proc/$PPID/status"], timeout=60)
    assert r.exit_code == 0, (r.stdout, r.stderr, r.error)
    lines = r.stdout.decode().splitlines()
    assert lines == ["rootfs 7f3a", "1", "host data", "host extra", "h4test", "/bin/sh /init ",
                     "/sbin/vz-agent"]
    # The agent's parent is init (PID 1), which is not the agent.
    assert ppid.stdout.decode().split() == ["PPid:", "1"]
    # Writes to / land in the tmpfs upper layer, never in the host's rootfs; shares are read-write.
    assert not (root / "etc" / "written-in-guest").exists()
    assert (data / "from-guest").read_text() == "guest\n"


def test_fallback_without_rootfs_and_console_lines(bundle: Path, tmp_path: Path) -> None:
    log = tmp_path / "serial.log"
    cfg = VmConfig.from_bundle(bundle, accel="tcg", fast_cmdline=False, serial_log=log)
    with LinuxVm(cfg) as vm:
        vm.wait_for_agent(180)
        r = vm.exec_collect(["sh", "-c", "ls /sbin/vz-agent /init; grep -c ' / ' /proc/mounts"], timeout=60)
    assert r.exit_code == 0, (r.stdout, r.stderr, r.error)
    assert r.stdout.decode().split() == ["/init", "/sbin/vz-agent", "1"]  # ls sorts; / is the initramfs
    text = log.read_text(errors="replace")
    assert "[vz-init] started" in text and "[vz-init] agent started" in text
    assert "rootfs:" not in text  # no share offered: nothing tried loudly


def test_quiet_silences_init(bundle: Path, tmp_path: Path) -> None:
    log = tmp_path / "serial.log"
    cfg = VmConfig.from_bundle(bundle, accel="tcg", serial_log=log)  # fast cmdline has `quiet`
    with LinuxVm(cfg) as vm:
        vm.wait_for_agent(180)
        assert vm.exec_collect(["true"], timeout=60).exit_code == 0
    assert "[vz-init]" not in log.read_text(errors="replace")


def test_rootfs_with_absolute_sbin_symlink(bundle: Path, tmp_path: Path) -> None:
    """A rootfs whose /sbin is an absolute symlink (/sbin -> /usr/sbin): the agent is copied to the
    root's /usr/sbin, resolved inside the root (vz-agent --mount-root, RESOLVE_IN_ROOT), and answers
    from there; nothing lands in the initramfs's /usr/sbin."""
    root = tmp_path / "rootfs"
    (root / "usr" / "sbin").mkdir(parents=True)
    (root / "etc").mkdir()
    (root / "sbin").symlink_to("/usr/sbin")
    (root / "etc" / "marker").write_text("abs-sbin\n")
    cfg = VmConfig.from_bundle(bundle, accel="tcg", rootfs=root)
    script = ("cat /etc/marker; ls /usr/sbin; readlink /proc/$PPID/exe;"
              " ls /proc/1/root/usr/sbin | grep -c vz-agent || true")
    with LinuxVm(cfg) as vm:
        vm.wait_for_agent(180)
        r = vm.exec_collect(["/run/vz/bin/sh", "-c", script], timeout=60)
    assert r.exit_code == 0, (r.stdout, r.stderr, r.error)
    lines = r.stdout.decode().splitlines()
    # The agent (the exec's parent) runs from the root's /usr/sbin; PID 1's root is the initramfs,
    # whose /usr/sbin stays empty ("0" from grep -c).
    assert lines == ["abs-sbin", "vz-agent", "/usr/sbin/vz-agent", "0"], (lines, r.stderr)
    assert not (root / "usr" / "sbin" / "vz-agent").exists()  # the copy is in the overlay's upper layer
