"""The x86_64 TCG boot-phase tuning and the initramfs compressions, in real boots (docs/vm.md,
"x86_64 under TCG"; docs/guest.md, "Initramfs").

Unit checks of where the tuning applies are in test_qemu_model.py; here the guest proves it got
it: its /proc/cmdline, the CPU flags it sees, and that it still reaches the agent. arm64 boots
exactly as before. A gzip and an uncompressed initramfs of the same archive both boot.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from vz_linux.arch import Architecture
from vz_linux.build.cpio import Compression, compress, decompress
from vz_linux.vm.linux_vm import LinuxVm, VmConfig
from vz_linux.vm.qemu import TCG_X86_ITEMS, host_tsc_khz

pytestmark = [pytest.mark.vm, pytest.mark.kernel, pytest.mark.slow]

_CMDLINE_ITEMS = {i for i in TCG_X86_ITEMS if i != "-erms"}


def _guest_view(config: VmConfig) -> tuple[set[str], set[str], str]:
    """(kernel command line words, CPU flags, clocksource) as the booted guest reports them."""
    with LinuxVm(config) as vm:
        vm.wait_for_agent(180)
        assert vm.exec_collect(["true"]).exit_code == 0
        cmdline = vm.exec_collect(["cat", "/proc/cmdline"]).stdout.decode().split()
        flags = next((line for line in vm.exec_collect(["cat", "/proc/cpuinfo"]).stdout.decode().splitlines()
                      if line.startswith(("flags", "Features"))), "")
        clock = vm.exec_collect(["cat", "/sys/devices/system/clocksource/clocksource0/current_clocksource"])
    return set(cmdline), set(flags.split(":", 1)[-1].split()), clock.stdout.decode().strip()


def test_x86_64_tuned_boot_reaches_the_agent_with_the_tuning(container_bundle: Path) -> None:
    base = VmConfig.from_bundle(container_bundle, accel="tcg")
    words, flags, clock = _guest_view(base)
    expected = {"noreplace-smp", "no_timer_check", "noapictimer"}
    if host_tsc_khz() is not None:  # tsc=reliable only when the TSC rate is told
        expected.add("tsc=reliable")
        assert clock in ("tsc", "tsc-early")  # tsc-early hands over to tsc a little later
    assert expected <= words, words
    assert "erms" not in flags  # -cpu max,-erms reached the guest
    # The same guest with the tuning off: none of it, and the CPU offers ERMS again.
    off_words, off_flags, _ = _guest_view(replace(base, tcg_tuning=False))
    assert not _CMDLINE_ITEMS & off_words
    assert "erms" in off_flags


def test_x86_64_two_vcpus_get_no_noapictimer(container_bundle: Path) -> None:
    words, _, _ = _guest_view(VmConfig.from_bundle(container_bundle, accel="tcg", cpus=2))
    assert {"noreplace-smp", "no_timer_check"} <= words and "noapictimer" not in words


def test_arm64_boots_as_before(container_bundle_arm64: Path) -> None:
    cfg = VmConfig.from_bundle(container_bundle_arm64, accel="tcg")
    assert cfg.arch is Architecture.arm64
    with LinuxVm(cfg) as vm:
        vm.wait_for_agent(180)
        assert vm.qemu is not None
        argv = vm.qemu.argv()
        assert argv[argv.index("-cpu") + 1] == "max"
        words = set(vm.exec_collect(["cat", "/proc/cmdline"]).stdout.decode().split())
    assert not _CMDLINE_ITEMS & words


@pytest.mark.parametrize("compression", [Compression.none, Compression.gzip], ids=str)
def test_initramfs_compression_boots(container_bundle: Path, tmp_path: Path, compression: Compression) -> None:
    raw = decompress((container_bundle / "initramfs.img").read_bytes())
    image = tmp_path / f"initramfs.{compression}"
    image.write_bytes(compress(raw, compression))
    assert Compression.detect(image.read_bytes()) is compression
    cfg = replace(VmConfig.from_bundle(container_bundle, accel="tcg"), initramfs=image)
    with LinuxVm(cfg) as vm:
        vm.wait_for_agent(180)
        r = vm.exec_collect(["sh", "-c", "test -x /sbin/vz-agent && echo ok"])
        assert r.stdout == b"ok\n"
