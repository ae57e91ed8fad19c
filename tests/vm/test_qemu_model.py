"""The VM description -> QEMU argv (no QEMU started)."""

from __future__ import annotations

from pathlib import Path

from vz_linux.arch import Architecture
from vz_linux.vm.agent_protocol import SERIAL_PORT_NAME
from vz_linux.vm.qemu import (
    TCG_X86_CMDLINE,
    TCG_X86_CPU,
    TCG_X86_ITEMS,
    TCG_X86_TSC_CMDLINE,
    TCG_X86_UP_CMDLINE,
    Accel,
    Disk,
    QemuVm,
    Share,
    Transport,
)


def _opt(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


def test_x86_64_microvm_pvh_with_agent_port() -> None:
    vm = QemuVm(arch=Architecture.x86_64, kernel=Path("/k/vmlinux"), initramfs=Path("/k/initramfs.img"),
                agent_socket=Path("/w/agent.sock"), serial_log=Path("/w/serial.log"), memory_mib=256)
    argv = vm.argv()
    assert argv[0] == "qemu-system-x86_64"
    assert _opt(argv, "-M")[0].startswith("microvm,acpi=off")
    assert "virtio-mmio.force-legacy=false" in _opt(argv, "-global")
    assert _opt(argv, "-kernel") == ["/k/vmlinux"] and _opt(argv, "-initrd") == ["/k/initramfs.img"]
    for flag in ("-nodefaults", "-no-user-config", "-nographic", "-no-reboot"):
        assert flag in argv
    assert _opt(argv, "-m") == ["256M"] and _opt(argv, "-accel") == ["tcg,tb-size=64"]
    chardevs = _opt(argv, "-chardev")
    assert "socket,id=agent0,path=/w/agent.sock" in chardevs  # a client: no server=on
    assert not any("server=on" in c for c in chardevs)
    assert "file,id=con0,path=/w/serial.log" in chardevs
    devices = _opt(argv, "-device")
    assert devices[0].startswith("virtio-serial-device")
    assert f"virtserialport,chardev=agent0,name={SERIAL_PORT_NAME},bus=vser0.0" in devices
    cmdline = _opt(argv, "-append")[0].split()
    assert "console=ttyS0" in cmdline and "reboot=t" in cmdline and "panic=-1" in cmdline
    # No network, vsock or shared memory unless asked for.
    assert not any(d.startswith(("virtio-net", "vhost-vsock", "vhost-user-fs")) for d in devices)
    assert "-object" not in argv


def test_arm64_virt_and_console() -> None:
    vm = QemuVm(arch=Architecture.arm64, kernel=Path("/k/vmlinux"), agent_socket=Path("/w/a.sock"))
    argv = vm.argv()
    assert argv[0] == "qemu-system-aarch64"
    assert _opt(argv, "-M")[0].startswith("virt") and _opt(argv, "-cpu") == ["max"]
    assert "console=ttyAMA0" in _opt(argv, "-append")[0].split()
    assert "-initrd" not in argv


def test_shares_need_shared_memory_backend_and_one_device_each() -> None:
    vm = QemuVm(arch=Architecture.x86_64, kernel=Path("/k"), memory_mib=512,
                shares=(Share("rootfs", Path("/w/fs0.sock")), Share("vz-mount-0", Path("/w/fs1.sock"))))
    argv = vm.argv()
    assert "memory-backend=mem" in _opt(argv, "-M")[0]
    assert "memory-backend-memfd,id=mem,size=512M,share=on" in _opt(argv, "-object")
    fs = [d for d in _opt(argv, "-device") if d.startswith("vhost-user-fs-device")]
    assert fs == ["vhost-user-fs-device,chardev=fs0,tag=rootfs", "vhost-user-fs-device,chardev=fs1,tag=vz-mount-0"]


def test_disks_are_raw_virtio_blk_in_order_with_escaped_paths() -> None:
    vm = QemuVm(arch=Architecture.x86_64, kernel=Path("/k"),
                disks=(Disk(Path("/d/root,1.img")), Disk(Path("/d/data.img"), read_only=True)))
    argv = vm.argv()
    assert _opt(argv, "-drive") == ["file=/d/root,,1.img,if=none,id=disk0,format=raw,discard=unmap",
                                    "file=/d/data.img,if=none,id=disk1,format=raw,discard=unmap,read-only=on"]
    blk = [d for d in _opt(argv, "-device") if d.startswith("virtio-blk")]
    assert blk == ["virtio-blk-device,drive=disk0", "virtio-blk-device,drive=disk1"]
    pc = QemuVm(arch=Architecture.x86_64, kernel=Path("/k"), machine="pc", disks=(Disk(Path("/d/r.img")),))
    assert "virtio-blk-pci,drive=disk0" in _opt(pc.argv(), "-device")
    assert "-drive" not in QemuVm(arch=Architecture.x86_64, kernel=Path("/k")).argv()


def test_network_vsock_and_pc_machine() -> None:
    vm = QemuVm(arch=Architecture.x86_64, kernel=Path("/k"), network=True, vsock_cid=5, machine="pc",
                accel=Accel.kvm)
    argv = vm.argv()
    assert vm.virtio is Transport.pci
    devices = _opt(argv, "-device")
    assert "virtio-net-pci,netdev=net0" in devices and "vhost-vsock-pci,guest-cid=5" in devices
    assert "user,id=net0" in _opt(argv, "-netdev")
    assert _opt(argv, "-cpu") == ["host"] and _opt(argv, "-accel") == ["kvm"]
    assert "-global" not in argv  # force-legacy is a virtio-mmio property


def test_two_configs_compare_as_data() -> None:
    a = QemuVm(arch=Architecture.x86_64, kernel=Path("/k"))
    assert a == QemuVm(arch=Architecture.x86_64, kernel=Path("/k"))
    assert a != QemuVm(arch=Architecture.x86_64, kernel=Path("/k"), network=True)
    quiet = QemuVm(arch=Architecture.x86_64, kernel=Path("/k"), fast_cmdline=False, cmdline_extra=("foo=1",))
    words = quiet.kernel_cmdline().split()
    assert "quiet" not in words and words[-1] == "foo=1"
    # The KSPP command-line hardening is on every boot (docs/profiles.md, "Hardening").
    assert {"init_on_alloc=1", "slab_nomerge", "page_alloc.shuffle=1", "randomize_kstack_offset=on"} <= set(words)
    assert "init_on_free=1" not in words


def test_tcg_translation_cache_size() -> None:
    """TCG gets a 64 MiB translation cache unless told otherwise; None keeps QEMU's default; KVM has none."""
    base = QemuVm(arch=Architecture.x86_64, kernel=Path("/k/vmlinux"))
    assert _opt(base.argv(), "-accel") == ["tcg,tb-size=64"]
    assert _opt(QemuVm(arch=Architecture.x86_64, kernel=Path("/k/vmlinux"), tcg_tb_size_mib=16).argv(),
                "-accel") == ["tcg,tb-size=16"]
    assert _opt(QemuVm(arch=Architecture.x86_64, kernel=Path("/k/vmlinux"), tcg_tb_size_mib=None).argv(),
                "-accel") == ["tcg"]
    assert _opt(QemuVm(arch=Architecture.x86_64, kernel=Path("/k/vmlinux"), accel=Accel.kvm).argv(),
                "-accel") == ["kvm"]
_TUNING = {*TCG_X86_CMDLINE, *TCG_X86_TSC_CMDLINE, *TCG_X86_UP_CMDLINE}


def test_tcg_tuning_only_for_x86_64_microvm_under_tcg() -> None:
    up = QemuVm(arch=Architecture.x86_64, kernel=Path("/k"), tsc_khz=2_400_000)
    words = up.kernel_cmdline().split()
    assert set(words) >= _TUNING
    assert {"noreplace-smp", "no_timer_check", "tsc=reliable", "noapictimer"} == _TUNING
    assert _opt(up.argv(), "-cpu") == [TCG_X86_CPU] == ["max,-erms"]
    # tsc=reliable only when the guest is told the TSC rate; noapictimer only with one vCPU.
    smp = QemuVm(arch=Architecture.x86_64, kernel=Path("/k"), cpus=2).kernel_cmdline().split()
    assert set(TCG_X86_CMDLINE) <= set(smp)
    assert "tsc=reliable" not in smp and "noapictimer" not in smp and "tsc_early_khz" not in " ".join(smp)
    # Not under KVM, not on arm64, not on -M pc (stock kernels), not when turned off.
    others = [QemuVm(arch=Architecture.x86_64, kernel=Path("/k"), accel=Accel.kvm, tsc_khz=1),
              QemuVm(arch=Architecture.arm64, kernel=Path("/k"), tsc_khz=1),
              QemuVm(arch=Architecture.x86_64, kernel=Path("/k"), machine="pc", tsc_khz=1),
              QemuVm(arch=Architecture.x86_64, kernel=Path("/k"), tcg_tuning=False, tsc_khz=1)]
    for vm in others:
        assert not _TUNING & set(vm.kernel_cmdline().split()), vm
        assert _opt(vm.argv(), "-cpu") == ["host" if vm.accel is Accel.kvm else "max"], vm
    # The same VM without the tuning differs in exactly those words and the CPU model.
    off = QemuVm(arch=Architecture.x86_64, kernel=Path("/k"), tsc_khz=2_400_000, tcg_tuning=False)
    assert set(words) - set(off.kernel_cmdline().split()) == _TUNING


def test_tcg_tuning_items_can_be_left_out_one_by_one() -> None:
    for item in TCG_X86_ITEMS:
        vm = QemuVm(arch=Architecture.x86_64, kernel=Path("/k"), tsc_khz=2_400_000, tcg_tuning_skip=(item,))
        words = set(vm.kernel_cmdline().split())
        assert item not in words and _TUNING - {item} <= words
        assert _opt(vm.argv(), "-cpu") == ["max" if item == "-erms" else TCG_X86_CPU]
