"""The arm64 container bundle boots under qemu-system-aarch64 -M virt (TCG) and passes verify --boot."""

from __future__ import annotations

from pathlib import Path

import pytest

from vz_linux.arch import Architecture
from vz_linux.vm.boot_verify import verify_boot
from vz_linux.vm.linux_vm import LinuxVm, VmConfig

pytestmark = [pytest.mark.vm, pytest.mark.kernel, pytest.mark.slow]


def test_arm64_boots_and_runs(container_bundle_arm64: Path) -> None:
    cfg = VmConfig.from_bundle(container_bundle_arm64, accel="tcg")
    assert cfg.arch is Architecture.arm64
    with LinuxVm(cfg) as vm:
        hello = vm.wait_for_agent(180)
        assert hello.machine == "aarch64" and hello.release.endswith("-vz-container")
        assert vm.exec_collect(["sh", "-c", "exit 5"]).exit_code == 5


def test_arm64_verify_boot(container_bundle_arm64: Path) -> None:
    result = verify_boot(container_bundle_arm64, accel="tcg", timeout=180)
    assert result.ok and result.rows
    assert all(r.passed for r in result.rows)
