"""Guests for the boot benchmark (and the VM tests): not part of the product.

* the bundle's own initramfs, re-assembled with Debian's virtio modules for a stock kernel;
* a "floor" initramfs whose /init only tells the host it is up and exits (no agent);
* Debian's ``linux-image-cloud-amd64`` kernel, fetched with ``apt-get download`` into the cache.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from vz_linux.arch import Architecture
from vz_linux.build.cpio import Archive
from vz_linux.build.initramfs import InitramfsInputs, build_archive, minimal_busybox_archive
from vz_linux.layout import cache_root
from vz_linux.run import run

DEBIAN_KERNEL_PACKAGE = "linux-image-cloud-amd64"
# Stock Debian builds virtio as modules (docs/vm.md); the agent needs these, in dependency order.
DEBIAN_MODULES = (
    "drivers/virtio/virtio_ring.ko",
    "drivers/virtio/virtio.ko",
    "drivers/virtio/virtio_pci_modern_dev.ko",
    "drivers/virtio/virtio_pci_legacy_dev.ko",
    "drivers/virtio/virtio_pci.ko",
    "drivers/char/virtio_console.ko",
)


@dataclass(frozen=True)
class DebianKernel:
    image: Path  # bzImage
    modules: Path  # lib/modules/<version>
    package: str  # exact package file name


def debian_cloud_kernel() -> DebianKernel:
    """Debian's cloud kernel for amd64, unpacked (not installed) under the cache; fetched once."""
    base = cache_root() / "debian-cloud"
    root = base / "root"
    if not (root / "boot").is_dir():
        base.mkdir(parents=True, exist_ok=True)
        dep = run(["apt-cache", "depends", DEBIAN_KERNEL_PACKAGE]).stdout.decode()
        image_pkg = next(line.split(":", 1)[1].strip() for line in dep.splitlines()
                         if line.strip().startswith("Depends: linux-image-"))
        run(["apt-get", "download", image_pkg], cwd=base)
        deb = next(base.glob(f"{image_pkg}_*.deb"))
        run(["dpkg-deb", "-x", str(deb), str(root)])
    image = next((root / "boot").glob("vmlinuz-*"))
    modules = next((root / "lib" / "modules").iterdir())
    deb_name = next(base.glob("linux-image-*.deb")).name
    return DebianKernel(image=image, modules=modules, package=deb_name)


def with_debian_modules(archive: Archive, kernel: DebianKernel) -> Archive:
    """The same initramfs, with a first /init that insmods the virtio modules and then runs ours."""
    init = archive.entries.pop("init")
    archive.add_file("init.vz", init.data, init.mode)
    archive.add_dir("lib/vz-modules")
    loads = []
    for rel in DEBIAN_MODULES:
        name = Path(rel).name
        archive.add_file(f"lib/vz-modules/{name}", (kernel.modules / "kernel" / rel).read_bytes())
        loads.append(f"insmod /lib/vz-modules/{name}")
    script = "#!/bin/sh\n" + "\n".join(loads) + "\nexec /init.vz\n"
    archive.add_file("init", script.encode(), 0o755)
    return archive


def write(archive: Archive, out: Path) -> Path:
    out.write_bytes(archive.to_gzip())
    return out


def bundle_archive(busybox: Path, agent: Path) -> Archive:
    return build_archive(InitramfsInputs.default(busybox=busybox, agent=agent))


# The init's lines that hand mounting to the agent (linux/initramfs/init); shell_init_archive drops them.
_C_MOUNT_API = 'if "$AGENT" --mount-api 2>/dev/null; then LO_UP=1; else mount_api_filesystems; fi'


def shell_init_archive(busybox: Path, agent: Path) -> Archive:
    """The bundle initramfs with init mounting through BusyBox as before the agent did (A/B of the C mounts)."""
    inputs = InitramfsInputs.default(busybox=busybox, agent=agent)
    text = (inputs.source_dir / "init").read_text()
    if _C_MOUNT_API not in text:
        raise RuntimeError("linux/initramfs/init no longer calls vz-agent --mount-api: update benchmarks/guests.py")
    archive = build_archive(inputs)
    del archive.entries["init"]
    archive.add_file("init", text.replace(_C_MOUNT_API, "mount_api_filesystems").encode(), 0o755)
    return archive


def floor_archive(busybox: Path, arch: Architecture) -> Archive:
    """/init finds the agent port and writes one line to it: the boot floor. It then waits before it
    reboots (QEMU exits), so the host can still read QEMU's RSS after the line (the VM is stopped
    by then); rebooting at once lost that race under load."""
    script = """#!/bin/sh
export PATH=/bin
busybox mount -t proc proc /proc
busybox mount -t sysfs sys /sys
busybox mount -t devtmpfs dev /dev
for p in /sys/class/virtio-ports/*; do
  [ "$(busybox cat $p/name)" = org.vz.agent.0 ] && echo "floor $(busybox cat /proc/uptime 2>/dev/null)" > /dev/${p##*/}
done
busybox sleep 60
busybox reboot -f
"""
    return minimal_busybox_archive(busybox, script)


def busybox_path(arch: Architecture) -> Path:
    from vz_linux.build.busybox import get_busybox

    return get_busybox(arch).path


def qemu_version() -> str:
    out = subprocess.run([Architecture.host().qemu_binary, "--version"], capture_output=True, text=True, check=False)
    return out.stdout.splitlines()[0] if out.stdout else "unknown"
