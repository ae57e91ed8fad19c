"""The ``ext4_root`` capability, proved by a boot of its own (docs/agent.md, "Probes").

Booting from a disk cannot be shown inside a guest that booted from its initramfs, so
``verify --boot`` boots the bundle a second time: from an 8 MiB ext4 image made on the host with
``mke2fs -d`` (:func:`~.descriptor.make_ext4`, as ``vz vm linux init`` makes a disk) as virtio-blk
``/dev/vda`` and ``root=/dev/vda``. The image holds a random token and the directories the init
mounts over (``bin`` is a symlink to ``/run/vz/bin``, the init's BusyBox in the new root; the agent
runs from its tmpfs copy ``/run/vz/vz-agent``: linux/initramfs/init). The probe passes when the agent
answers, its ``/`` is ext4 on ``/dev/vda`` (``/proc/self/mountinfo``) and it reads the token back
from the disk. A kernel without ext4 or virtio-blk leaves the init in the initramfs (or never
answers), and the probe fails saying what it saw.

The guest is untrusted: its output is bounded (``MAX_OUTPUT``), compared, and shown as one
sanitized line; nothing from it becomes a host path.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
from pathlib import Path

from ..errors import ExecOutputLimitError, ProbeInputError, VmDiskError, VzLinuxError
from ..fsutil import owned_tempdir
from ..profiles import KernelCapability
from .descriptor import make_ext4
from .linux_vm import LinuxVm, VmConfig
from .persistent import GUEST_BIN, ROOT_DEVICE
from .probes import ProbeOutcome, one_line
from .qemu import Disk

ROOT_IMAGE_BYTES = 8 << 20
TOKEN_FILE = "vz-root-token"  # at the top of the image
MAX_OUTPUT = 64 * 1024  # bytes of each guest command's output the host accepts
INPUTS_PREFIX = "vz-root-probe-"
# What the image holds besides the token: the mount points the init uses, and /bin.
_DIRS = ("proc", "sys", "dev", "tmp", "run", "etc")
NAME = KernelCapability.ext4_root.value


def make_root_image(image: Path, token: str | None) -> Path:
    """``image`` becomes an ext4 filesystem (``mke2fs -d``) holding ``/vz-root-token`` (``token``;
    none when ``token`` is None), the init's mount points and ``/bin`` -> ``/run/vz/bin``."""
    tree = image.with_name(image.name + ".tree")
    tree.mkdir(mode=0o755)
    for name in _DIRS:
        (tree / name).mkdir(mode=0o755)
    (tree / "bin").symlink_to(GUEST_BIN)  # resolved in the guest, never on the host
    if token is not None:
        (tree / TOKEN_FILE).write_text(token + "\n")
    try:
        make_ext4(tree, image, ROOT_IMAGE_BYTES, "vz-root-probe")
    except VmDiskError as e:
        raise ProbeInputError(f"cannot make the ext4_root probe image: {e}",
                              hint="check e2fsprogs (mke2fs -d)") from None
    return image


def root_config(config: VmConfig, image: Path) -> VmConfig:
    """``config`` booting from ``image`` as ``/dev/vda`` (its only disk, no shares; its own serial log)."""
    return dataclasses.replace(config, disks=(Disk(image),), shares=(), serial_log=None,
                               cmdline_extra=(*config.cmdline_extra, f"root={ROOT_DEVICE}"))


def root_mount(mountinfo: str) -> tuple[str, str] | None:
    """(source, filesystem type) of what is mounted on ``/`` (the last, topmost, mount there)."""
    found = None
    for line in mountinfo.splitlines():
        fields, sep, rest = line.partition(" - ")
        parts, tail = fields.split(), rest.split()
        if sep and len(parts) >= 5 and len(tail) >= 2 and parts[4] == "/":
            found = (tail[1], tail[0])
    return found


def _read(vm: LinuxVm, path: str, timeout: float) -> tuple[bool, str]:
    """``cat PATH`` in the guest: (exit 0, its output or the reason it failed), bounded."""
    try:
        # /bin/cat: on the image /bin -> /run/vz/bin; a guest left in the initramfs has its own
        r = vm.agent.exec_collect(["/bin/cat", path], timeout=timeout, max_output=MAX_OUTPUT)
    except ExecOutputLimitError:
        return False, f"{path}: over {MAX_OUTPUT} bytes"
    if r.ok:
        return True, r.stdout.decode(errors="replace")
    return False, one_line(r.stderr) or r.describe()


def check_root(vm: LinuxVm, token: str, timeout: float) -> ProbeOutcome:
    """In a guest booted by :func:`root_config`: ``/`` must be ext4 on /dev/vda and hold ``token``."""
    ok, mountinfo = _read(vm, "/proc/self/mountinfo", timeout)
    if not ok:
        return ProbeOutcome(False, f"cannot read /proc/self/mountinfo: {mountinfo}")
    root = root_mount(mountinfo)
    if root != (ROOT_DEVICE, "ext4"):
        seen = f"{root[1]} on {root[0]}" if root else "not in mountinfo"
        return ProbeOutcome(False, one_line(f"/ is {seen}, not ext4 on {ROOT_DEVICE}: the init did not boot "
                                            f"from the disk (no ext4 or virtio-blk in this kernel?)"))
    ok, text = _read(vm, f"/{TOKEN_FILE}", timeout)
    if not ok or text.strip() != token:
        got = one_line(text, 40) if ok else text
        return ProbeOutcome(False, one_line(f"/ is ext4 on {ROOT_DEVICE}, but /{TOKEN_FILE} does not hold the "
                                            f"host's token: {got or 'empty'}"))
    return ProbeOutcome(True, f"{NAME}: / is ext4 on {ROOT_DEVICE} (mountinfo), token {token[:8]}… read from "
                              f"the disk")


def boot_from_image(config: VmConfig, image: Path, token: str, timeout: float) -> ProbeOutcome:
    """Boot ``config`` from ``image`` and check it; a guest that never answers is a failed probe."""
    try:
        with LinuxVm(root_config(config, image)) as vm:
            vm.wait_for_agent(timeout)
            return check_root(vm, token, timeout)
    except ProbeInputError:
        raise
    except VzLinuxError as e:
        return ProbeOutcome(False, one_line(f"booting from the ext4 disk: {e.one_line()}"))


def probe_ext4_root(config: VmConfig, timeout: float, parent: Path | None = None) -> ProbeOutcome:
    """The whole probe: a fresh token, its image, one boot from it (the image is removed after)."""
    base = Path(parent) if parent is not None else Path(os.environ.get("TMPDIR") or "/tmp")
    token = secrets.token_hex(16)
    with owned_tempdir(base, INPUTS_PREFIX) as d:
        image = make_root_image(d / "root.img", token)
        return boot_from_image(config, image, token, timeout)
