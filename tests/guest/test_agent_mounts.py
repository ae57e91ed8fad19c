"""`vz-agent --mount-api` and `--mount-root` (guest/agent/mounts.c) run for real in a private mount and
network namespace, chrooted into the extracted initramfs: the mounts init needs, idempotence, the exit
codes init maps, lo brought up, and a disk root whose absolute symlinks must resolve inside it (RESOLVE_IN_ROOT).
The virtiofs root needs a guest: tests/guest/test_initramfs_vm.py."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from vz_linux.build.initramfs import InitramfsInputs, write_initramfs

from .userland_fixtures import extract

API_MOUNTS = [("/proc", "proc"), ("/sys", "sysfs"), ("/dev", "devtmpfs"), ("/dev/pts", "devpts"),
              ("/dev/shm", "tmpfs"), ("/tmp", "tmpfs"), ("/run", "tmpfs"), ("/sys/fs/cgroup", "cgroup2")]


@pytest.fixture
def tree(host_inputs: InitramfsInputs, tmp_path: Path) -> Path:
    return extract(write_initramfs(host_inputs, tmp_path / "i.img"), tmp_path / "root")


def in_guest_ns(tree: Path, script: str, *, before: str = "") -> subprocess.CompletedProcess[str]:
    """``script`` as BusyBox sh in ``tree`` (chroot) in new mount, network and PID namespaces;
    ``before`` runs first outside the chroot, in the same namespaces (host tools)."""
    outer = f"{before}\nexec chroot {tree} /bin/sh -c \"$1\""
    return subprocess.run(["unshare", "--mount", "--propagation", "private", "--net", "--pid", "--fork",
                           "sh", "-c", outer, "sh", script],
                          capture_output=True, text=True, timeout=120, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})


def mounts(mountinfo: str) -> list[tuple[str, str]]:
    return [(line.split()[4], line.split(" - ")[1].split()[0]) for line in mountinfo.splitlines() if " - " in line]


def test_mount_api_mounts_all_and_is_idempotent(tree: Path) -> None:
    r = in_guest_ns(tree, "/sbin/vz-agent --mount-api; echo rc=$?; /sbin/vz-agent --mount-api; echo rc=$?;"
                          " cat /sys/class/net/lo/flags; ls -l /dev/ptmx; echo ---; cat /proc/self/mountinfo")
    head, _, info = r.stdout.partition("---\n")
    assert head.splitlines()[:3] == ["rc=0", "rc=0", "0x9"], (r.stdout, r.stderr)  # lo: IFF_UP | IFF_LOOPBACK
    assert "/dev/ptmx" in head
    got = mounts(info)
    for point in API_MOUNTS:
        assert got.count(point) == 1, (point, got)  # mounted, and not twice by the second run


@pytest.mark.parametrize(("args", "code"), [
    ("--mount-root --bogus", 1),
    ("--mount-api --disk /dev/null", 1),
    ("--mount-root --disk relative", 1),
    ("--mount-root --quiet --disk /dev/null", 10),  # not a block device: nothing to switch to
    ("--mount-root --quiet", 10),  # no virtiofs share "rootfs"
])
def test_mount_root_exit_codes(tree: Path, args: str, code: int) -> None:
    r = in_guest_ns(tree, f"/sbin/vz-agent --mount-api && /sbin/vz-agent {args}; echo rc=$?; grep -c ' /mnt/' "
                          "/proc/self/mountinfo")
    assert r.stdout.split() == [f"rc={code}", "0"], (r.stdout, r.stderr)  # and nothing left mounted


def test_disk_root_resolves_absolute_symlinks_inside_it(tree: Path, tmp_path: Path) -> None:
    """The disk's /etc is an absolute symlink: resolv.conf must land on the disk, not in the initramfs."""
    src = tmp_path / "disk"
    (src / "elsewhere" / "etc").mkdir(parents=True)
    (src / "etc").symlink_to("/elsewhere/etc")
    (src / "elsewhere" / "etc" / "resolv.conf").write_text("nameserver 192.0.2.99\n")
    image = tmp_path / "disk.img"
    subprocess.run(["mke2fs", "-q", "-F", "-t", "ext4", "-d", str(src), str(image), "16M"], check=True)
    loop = subprocess.run(["losetup", "--find", "--show", str(image)], capture_output=True, text=True,
                          check=True).stdout.strip()
    try:
        # With an eth0 the agent owns DNS: it replaces the disk's resolv.conf.
        r = in_guest_ns(
            tree,
            f"/sbin/vz-agent --mount-api && /sbin/vz-agent --mount-root --disk {loop}; echo rc=$?;"
            " cat /mnt/root/elsewhere/etc/resolv.conf; [ -e /elsewhere ] && echo ESCAPED;"
            " [ -x /mnt/root/run/vz/vz-agent ] && echo agent-copied; ls /mnt/root/run/vz/bin/busybox;"
            " cat /proc/self/mountinfo",
            before="ip link add eth0 type veth peer name peer0")
    finally:
        subprocess.run(["losetup", "-d", loop], check=False)
    lines = r.stdout.splitlines()
    assert lines[:2] == [f"[vz-init] root: {loop} mounted, switching into it", "rc=0"], (r.stdout, r.stderr)
    assert lines[2] == (tree / "etc" / "resolv.conf").read_text().splitlines()[0]
    assert "ESCAPED" not in lines and "agent-copied" in lines
    assert "/mnt/root/run/vz/bin/busybox" in lines
    got = mounts(r.stdout)
    for point, fstype in [("/mnt/root", "ext4"), ("/mnt/root/proc", "proc"), ("/mnt/root/dev", "devtmpfs"),
                          ("/mnt/root/tmp", "tmpfs"), ("/mnt/root/run", "tmpfs")]:
        assert (point, fstype) in got, (point, got)
