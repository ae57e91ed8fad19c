"""A VM described as data, turned into a QEMU argv (docs/vm.md, "The VM").

:class:`QemuVm` is a frozen description; :meth:`QemuVm.argv` is the only place that knows QEMU's
option syntax, so two VM configurations can be compared and printed. Nothing here starts a process.

Facts this encodes:

* x86_64 boots ``-M microvm,acpi=off`` with the PVH ``vmlinux`` as ``-kernel``; without ACPI QEMU
  describes the virtio-mmio devices on the kernel command line (``VIRTIO_MMIO_CMDLINE_DEVICES``).
* QEMU's virtio-mmio defaults to legacy devices, which virtiofsd refuses: force modern ones.
* arm64 boots ``-M virt -cpu max`` with ``Image``; devices are found through the device tree.
* the agent channel is a virtio-serial port on a Unix socket the *host* listens on (QEMU connects).
* virtiofs needs guest RAM in shared memory (memfd backend).
* every path inside a ``key=value,...`` option is escaped QEMU's way (``,`` doubled, :func:`qemu_opt`):
  a data dir, work dir or ``TMPDIR`` with a comma must not split an option.
"""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..arch import Architecture
from .agent_protocol import SERIAL_PORT_NAME

VHOST_VSOCK_DEVICE = Path("/dev/vhost-vsock")


class Accel(enum.StrEnum):
    kvm = "kvm"
    tcg = "tcg"


class Transport(enum.StrEnum):
    """How virtio devices sit on the machine: memory-mapped (no bus scan) or PCI."""

    mmio = "mmio"
    pci = "pci"

    def device(self, kind: str) -> str:
        """QEMU device name for a virtio ``kind`` (``serial``, ``net``, ``rng``, ``vhost-user-fs``…)."""
        return f"{kind}-device" if self is Transport.mmio else f"{kind}-pci"


# Kernel command line that every boot gets. Each item is here for a reason:
BASE_CMDLINE: tuple[str, ...] = (
    "reboot=t",  # microvm: a guest reboot becomes a triple fault, and -no-reboot turns that into exit
    "panic=-1",  # reboot at once on panic, so QEMU exits and the host sees it instead of a hang
    "rdinit=/init",
)

# KSPP command-line hardening, measured cheap A/B (docs/profiles.md, "Hardening"): zeroed
# allocations, no slab cache merging, a shuffled page allocator, a random kernel stack offset per
# syscall. init_on_free=1 is refused (it added ~0.7 s of boot and 200 MiB of RSS under TCG).
HARDENING_CMDLINE: tuple[str, ...] = ("init_on_alloc=1", "slab_nomerge", "page_alloc.shuffle=1",
                                      "randomize_kstack_offset=on")

# Fast-boot additions; each choice, kept or dropped, and why: docs/vm.md, "Boot-time choices".
# `quiet`: every console byte is an emulated UART write under TCG.
FAST_CMDLINE: tuple[str, ...] = ("quiet",)

# x86_64 microvm under TCG only (QemuVm.tcg_tuning; docs/vm.md, "x86_64 under TCG"). Each one was
# measured on its own (benchmarks/kernel_phase.py --study):
# `noreplace-smp`: a 1-vCPU kernel otherwise rewrites every SMP lock prefix (thousands of text pokes,
#   each one flushing TCG's translated code);
# `no_timer_check`: skips the IO-APIC "does the timer tick" check, which waits on emulated ticks.
TCG_X86_CMDLINE: tuple[str, ...] = ("noreplace-smp", "no_timer_check")
# Only when the guest is told the TSC rate (tsc_early_khz=): trust the TSC, no clocksource watchdog.
TCG_X86_TSC_CMDLINE: tuple[str, ...] = ("tsc=reliable",)
# Only with one vCPU: no local APIC timer, so no APIC timer calibration (the PIT/HPET ticks instead;
# a second CPU needs its own local timer).
TCG_X86_UP_CMDLINE: tuple[str, ...] = ("noapictimer",)
# TCG runs `rep stosb`/`rep movsb` a byte per helper step; without ERMS the kernel's memset/memcpy
# and clear_page use the 8-byte string ops (page zeroing, free_initmem's poisoning).
TCG_X86_CPU = "max,-erms"
# Names of the tuning's items, to leave single ones out when measuring them (QemuVm.tcg_tuning_skip).
TCG_X86_ITEMS: tuple[str, ...] = (*TCG_X86_CMDLINE, *TCG_X86_TSC_CMDLINE, *TCG_X86_UP_CMDLINE, "-erms")


def qemu_opt(value: object) -> str:
    """``value`` as one value inside a QEMU ``key=value,...`` option: commas doubled."""
    return str(value).replace(",", ",,")


@dataclass(frozen=True)
class Share:
    """A virtiofs share: ``tag`` as seen by the guest, served by virtiofsd on ``socket``."""

    tag: str
    socket: Path


@dataclass(frozen=True)
class Disk:
    """A raw disk image offered to the guest as a virtio-blk device (``/dev/vda``, ``/dev/vdb``… in
    order). The file is the user's (a persistent VM's disk), never a path built from guest output."""

    path: Path
    read_only: bool = False
    # A snapshot's disk the guest has not read yet (an OCI template's placeholder): at restore another
    # file of the same size may stand in for it (vm_shape names it by index and size, not by path).
    swappable: bool = False


@dataclass(frozen=True)
class QemuVm:
    arch: Architecture
    kernel: Path
    initramfs: Path | None = None
    cpus: int = 1
    memory_mib: int = 256
    accel: Accel = Accel.tcg
    cmdline_extra: tuple[str, ...] = ()
    fast_cmdline: bool = True
    hardening_cmdline: bool = True  # HARDENING_CMDLINE (off only to measure it)
    serial_log: Path | None = None  # QEMU writes the console to this file (unbounded)
    # ... or to this Unix socket the host listens on (LinuxVm: the host caps the log it keeps)
    serial_socket: Path | None = None
    # Unix socket the host listens on; QEMU connects as a client (docs/vm.md, "The VM").
    agent_socket: Path | None = None
    qmp_socket: Path | None = None
    vsock_cid: int | None = None
    network: bool = False
    shares: tuple[Share, ...] = ()
    disks: tuple[Disk, ...] = ()
    # A virtconsole on the agent's virtio-serial bus makes /dev/hvc0 exist (hvc0_serial probe).
    hvc_console: bool = True
    # None: the arch's default (Architecture.qemu_machine). "pc" boots stock distro kernels: theirs
    # find virtio-mmio only through ACPI, and microvm's ACPI mode hangs them in timer calibration under
    # TCG; pc gives them PCI virtio and the legacy timers they expect.
    machine: str | None = None
    transport: Transport | None = None  # None: the arch's default
    # TCG hands the guest the host's TSC; telling the guest its rate (x86 tsc_early_khz=) spares it a
    # PIT calibration that fails under TCG and leaves it on the 4 ms jiffies clock.
    tsc_khz: int | None = None
    # Restoring a snapshot: QEMU starts with no guest running and waits for QMP migrate-incoming,
    # so the snapshot can be checked against this VM before any state is loaded (docs/vm.md).
    incoming: bool = False
    # TCG's translation cache in MiB (-accel tcg,tb-size=N); None: QEMU's default, a 1 GiB reserve
    # that shows in RSS (docs/vm.md, "Memory"). Not part of a snapshot's shape.
    tcg_tb_size_mib: int | None = 64
    # x86_64 microvm under TCG: TCG_X86_CMDLINE (and the TSC / one-vCPU items) and -cpu TCG_X86_CPU.
    # Off only to measure it (benchmarks/kernel_phase.py); it changes saved state: the snapshot shape
    # records both the CPU model and the command line.
    tcg_tuning: bool = True
    tcg_tuning_skip: tuple[str, ...] = ()  # items of TCG_X86_ITEMS left out (only to measure each one)
    extra_args: tuple[str, ...] = field(default=())

    @property
    def qemu_binary(self) -> str:
        return self.arch.qemu_binary

    @property
    def machine_type(self) -> str:
        return self.machine or self.arch.qemu_machine

    @property
    def virtio(self) -> Transport:
        if self.transport is not None:
            return self.transport
        return Transport.mmio if self.machine_type in ("microvm", "virt") else Transport.pci

    @property
    def tcg_x86_tuned(self) -> bool:
        """Whether the x86_64-under-TCG tuning applies to this VM (TCG, x86_64, microvm, asked for)."""
        return (self.tcg_tuning and self.accel is Accel.tcg and self.arch is Architecture.x86_64
                and self.machine_type == "microvm")

    @property
    def cpu_model(self) -> str:
        if self.accel is not Accel.tcg:
            return "host"
        return TCG_X86_CPU if self.tcg_x86_tuned and "-erms" not in self.tcg_tuning_skip else "max"

    def kernel_cmdline(self) -> str:
        parts: list[str] = [f"console={self.arch.serial_console}", *BASE_CMDLINE]
        if self.hardening_cmdline:
            parts += HARDENING_CMDLINE
        if self.fast_cmdline:
            parts += FAST_CMDLINE
        if self.tsc_khz is not None and self.arch is Architecture.x86_64:
            parts.append(f"tsc_early_khz={self.tsc_khz}")
        if self.tcg_x86_tuned:
            tuning = [*TCG_X86_CMDLINE]
            if self.tsc_khz is not None:
                tuning += TCG_X86_TSC_CMDLINE
            if self.cpus == 1:
                tuning += TCG_X86_UP_CMDLINE
            parts += [item for item in tuning if item not in self.tcg_tuning_skip]
        parts += self.cmdline_extra
        return " ".join(parts)

    def machine_args(self) -> list[str]:
        mem_backend = ",memory-backend=mem" if self.shares else ""
        cpu = ["-cpu", self.cpu_model]
        if self.machine_type == "microvm":
            # acpi=off: QEMU then lists the virtio-mmio devices on the kernel command line.
            # x-option-roms=off: qboot skips the option-ROM scan.
            return ["-M", f"microvm,acpi=off,x-option-roms=off{mem_backend}", *cpu]
        if self.machine_type == "virt":
            return ["-M", f"virt,gic-version=3{mem_backend}", *cpu]
        return ["-M", f"{self.machine_type}{mem_backend}", *cpu]

    def argv(self) -> list[str]:
        a: list[str] = [self.qemu_binary, *self.machine_args()]
        if self.accel is Accel.tcg and self.tcg_tb_size_mib is not None:
            a += ["-accel", f"tcg,tb-size={self.tcg_tb_size_mib}"]
        else:
            a += ["-accel", self.accel.value]
        a += ["-smp", str(self.cpus), "-m", f"{self.memory_mib}M"]
        a += ["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"]
        if self.virtio is Transport.mmio:
            # virtiofsd refuses legacy virtio devices, and modern ones are faster to set up.
            a += ["-global", "virtio-mmio.force-legacy=false"]
        a += ["-kernel", str(self.kernel)]
        if self.initramfs is not None:
            a += ["-initrd", str(self.initramfs)]
        a += ["-append", self.kernel_cmdline()]
        # Serial console: to a log file (or nowhere). -nodefaults removed the default one.
        if self.serial_socket is not None:
            a += ["-chardev", f"socket,id=con0,path={qemu_opt(self.serial_socket)}", "-serial", "chardev:con0"]
        elif self.serial_log is not None:
            a += ["-chardev", f"file,id=con0,path={qemu_opt(self.serial_log)}", "-serial", "chardev:con0"]
        else:
            a += ["-serial", "null"]
        if self.qmp_socket is not None:
            a += ["-chardev", f"socket,id=qmp0,path={qemu_opt(self.qmp_socket)}",
                  "-mon", "chardev=qmp0,mode=control"]
        if self.agent_socket is not None or self.hvc_console:
            a += ["-device", f"{self.virtio.device('virtio-serial')},id=vser0"]
            if self.hvc_console:
                # virtconsole nr 0 = /dev/hvc0; output is discarded (the serial log has the console).
                a += ["-chardev", "null,id=hvc0", "-device", "virtconsole,chardev=hvc0,bus=vser0.0"]
            if self.agent_socket is not None:
                a += ["-chardev", f"socket,id=agent0,path={qemu_opt(self.agent_socket)}",
                      "-device", f"virtserialport,chardev=agent0,name={SERIAL_PORT_NAME},bus=vser0.0"]
        if self.vsock_cid is not None:
            a += ["-device", f"{self.virtio.device('vhost-vsock')},guest-cid={self.vsock_cid}"]
        if self.network:
            # User-mode network: QEMU's built-in DHCP gives the guest 10.0.2.15, the host is 10.0.2.2.
            a += ["-netdev", "user,id=net0", "-device", f"{self.virtio.device('virtio-net')},netdev=net0"]
        if self.shares:
            a += ["-object", f"memory-backend-memfd,id=mem,size={self.memory_mib}M,share=on"]
            for i, share in enumerate(self.shares):
                a += ["-chardev", f"socket,id=fs{i},path={qemu_opt(share.socket)}",
                      "-device", f"{self.virtio.device('vhost-user-fs')},chardev=fs{i},tag={share.tag}"]
        for i, disk in enumerate(self.disks):
            # Raw, no format probing (a guest-written header must never change how QEMU reads it).
            ro = ",read-only=on" if disk.read_only else ""
            a += ["-drive", f"file={qemu_opt(disk.path)},if=none,id=disk{i},format=raw,discard=unmap{ro}",
                  "-device", f"{self.virtio.device('virtio-blk')},drive=disk{i}"]
        if self.incoming:
            a += ["-incoming", "defer"]
        a += list(self.extra_args)
        return a


def vhost_vsock_available() -> bool:
    """vsock needs the host's vhost-vsock device (not every host has one)."""
    return VHOST_VSOCK_DEVICE.exists() and os.access(VHOST_VSOCK_DEVICE, os.R_OK | os.W_OK)


def host_tsc_khz() -> int | None:
    """The host's TSC rate when the host knows it exactly (``tsc_known_freq``), else None."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    flags = next((line for line in text.splitlines() if line.startswith("flags")), "").split()
    if not {"constant_tsc", "nonstop_tsc", "tsc_known_freq"} <= set(flags):
        return None
    mhz = next((line.split(":", 1)[1] for line in text.splitlines() if line.startswith("cpu MHz")), None)
    try:
        return round(float(mhz) * 1000) if mhz else None
    except ValueError:
        return None
