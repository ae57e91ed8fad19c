"""`vz-agent --mount-api`, `--mount-root` and `--oci-prepare` (guest/agent/mounts.c) run for real in a private mount and
network namespace, chrooted into the extracted initramfs: the mounts init needs, idempotence, the exit
codes init maps, lo brought up, and a disk root whose absolute symlinks must resolve inside it (RESOLVE_IN_ROOT).
The virtiofs root needs a guest: tests/guest/test_initramfs_vm.py."""

from __future__ import annotations

import shlex
import subprocess
from collections.abc import Iterator
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


# The guest paths come from the host's one owner of them (oci/guest.py); `prep` mounts a tmpfs as
# the template's setup does, then runs the argv the host sends after a restore.
def _oci_prepare_script(loop: str, cwd: str) -> str:
    from vz_linux.oci import guest

    argv = " ".join(shlex.quote(a) for a in guest.block_prepare(cwd, disk=loop))
    return (f"/sbin/vz-agent --mount-api && mkdir -p {guest.GUEST_IMAGE} {guest.GUEST_CTL} {guest.GUEST_WORK} && "
            f"mount -t tmpfs vz-oci {guest.GUEST_WORK} && mkdir -p {guest.GUEST_WORK}/upper {guest.GUEST_WORK}/work "
            f"{guest.GUEST_ROOTFS} && printf '{{\"ociVersion\": \"1.0.2\"}}' | {argv}; echo rc=$?; ")


@pytest.fixture
def image_loop(tmp_path: Path) -> Iterator[str]:
    """A hostile image as a read-only ext4 on a loop device: /work an absolute symlink (to the image's
    /data, and a directory of that name exists in the guest too), /ctl one to the guest's own
    /run/vz-oci (nothing of that name in the image), /up a relative one climbing out."""
    src = tmp_path / "image"
    (src / "bin").mkdir(parents=True)
    (src / "data").mkdir()
    (src / "bin" / "marker").write_text("image\n")
    (src / "work").symlink_to("/data")
    (src / "ctl").symlink_to("/run/vz-oci")
    (src / "up").symlink_to("../../../../..")
    image = tmp_path / "image.img"
    subprocess.run(["mke2fs", "-q", "-F", "-t", "ext4", "-d", str(src), str(image), "8M"], check=True)
    loop = subprocess.run(["losetup", "--find", "--show", "--read-only", str(image)], capture_output=True,
                          text=True, check=True).stdout.strip()
    try:
        yield loop
    finally:
        subprocess.run(["losetup", "-d", loop], check=False)


def test_oci_prepare_mounts_the_image_and_keeps_the_workdir_inside_the_container(tree: Path, image_loop: str) -> None:
    from vz_linux.oci import guest

    rootfs = guest.GUEST_ROOTFS
    r = in_guest_ns(tree, "mkdir /data; " + _oci_prepare_script(image_loop, "/work/made/deep") +
                    f"cat {guest.GUEST_CTL}/config.json; echo; cat {rootfs}/bin/marker; "
                    f"ls -d {rootfs}/data/made/deep; ls -d /data/made 2>&1; "
                    "cat /proc/self/mountinfo")
    lines = r.stdout.splitlines()
    assert lines[:4] == ["rc=0", '{"ociVersion": "1.0.2"}', "image", f"{rootfs}/data/made/deep"], (r.stdout, r.stderr)
    assert "No such file" in lines[4]  # not made in the guest's own /data
    got = mounts(r.stdout)
    assert (guest.GUEST_IMAGE, "ext4") in got and (rootfs, "overlay") in got


@pytest.mark.parametrize("cwd", ["/up/escaped", "/../../escaped"])
def test_oci_prepare_climbing_out_stays_in_the_container_root(tree: Path, image_loop: str, cwd: str) -> None:
    from vz_linux.oci import guest

    r = in_guest_ns(tree, _oci_prepare_script(image_loop, cwd) +
                    f"ls -d {guest.GUEST_ROOTFS}/escaped; ls -d /escaped /run/escaped 2>&1 | grep -c 'No such'")
    assert r.stdout.split() == ["rc=0", f"{guest.GUEST_ROOTFS}/escaped", "2"], (r.stdout, r.stderr)


def test_oci_prepare_failures_say_what_and_exit_2(tree: Path, image_loop: str) -> None:
    from vz_linux.oci import guest

    # Through a symlink to a path the image does not have (but the guest does): refused, nothing
    # made in the guest (BusyBox's `mkdir -p` followed it there).
    r = in_guest_ns(tree, _oci_prepare_script(image_loop, "/ctl/made") + "ls -d /run/vz-oci/made 2>&1")
    assert r.stdout.split()[0] == "rc=2" and "No such file" in r.stdout, (r.stdout, r.stderr)
    assert "making the working directory ctl/made" in r.stderr
    # A file where the working directory should be: one line naming the step, exit 2.
    r = in_guest_ns(tree, _oci_prepare_script(image_loop, "/bin/marker/sub"))
    assert r.stdout.split() == ["rc=2"] and "making the working directory" in r.stderr, (r.stdout, r.stderr)
    # Not an ext4 disk at all (tries, then gives up): exit 2.
    r = in_guest_ns(tree, _oci_prepare_script("/dev/null", "/"))
    assert r.stdout.split() == ["rc=2"] and "mounting the image disk /dev/null" in r.stderr, (r.stdout, r.stderr)
    # --mkdir-in (the cold path's last step) refuses the same way, and makes a plain one.
    r = in_guest_ns(tree, _oci_prepare_script(image_loop, "/") + f"/sbin/vz-agent --mkdir-in {guest.GUEST_ROOTFS} "
                    f"/ctl/made; echo rc=$?; /sbin/vz-agent --mkdir-in {guest.GUEST_ROOTFS} /up/a/b; echo rc=$?; "
                    f"ls -d {guest.GUEST_ROOTFS}/a/b /run/vz-oci/made 2>&1")
    assert r.stdout.split()[:3] == ["rc=0", "rc=2", "rc=0"], (r.stdout, r.stderr)
    assert f"{guest.GUEST_ROOTFS}/a/b" in r.stdout.splitlines() and "/run/vz-oci/made: No such file" in r.stdout
    assert guest.prepare_script("/w d").splitlines()[7] == f"{guest.GUEST_AGENT} --mkdir-in {guest.GUEST_ROOTFS} '/w d'"
    # Relative paths or a wrong count: usage, exit 1.
    r = in_guest_ns(tree, "/sbin/vz-agent --oci-prepare a b c d e f; echo rc=$?; /sbin/vz-agent --mkdir-in / a; "
                          "echo rc=$?")
    assert r.stdout.split() == ["rc=1", "rc=1"] and "usage" in r.stderr
    assert guest.block_prepare("/")[:2] == [guest.GUEST_AGENT, "--oci-prepare"]
