"""QEMU's memory under TCG (docs/vm.md, "Memory"): no transparent huge pages for the QEMU process and a
64 MiB translation cache, unless the VmConfig asks otherwise. Real processes, real QEMU."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from vz_linux.run import spawn
from vz_linux.vm.linux_vm import LinuxVm, VmConfig


def _status(pid: int, key: str) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"no {key} in /proc/{pid}/status")


def _rollup_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {key} in /proc/{pid}/smaps_rollup")


@pytest.mark.parametrize(("no_thp", "expected"), [(True, "0"), (False, "1")])
def test_spawn_no_thp_is_kept_across_exec(no_thp: bool, expected: str) -> None:
    with spawn(["sleep", "30"], no_thp=no_thp) as proc:
        # PR_SET_THP_DISABLE set before exec is what the exec'd program runs with.
        assert _status(proc.pid, "THP_enabled") == expected
    assert proc.returncode is not None


@pytest.mark.vm
@pytest.mark.kernel
@pytest.mark.slow
def test_tcg_qemu_runs_without_huge_pages_and_small_tb_cache(container_bundle: Path) -> None:
    cfg = VmConfig.from_bundle(container_bundle, accel="tcg")
    with LinuxVm(cfg) as vm:
        vm.wait_for_agent(180)
        assert vm.pid is not None and vm.qemu is not None
        assert _status(vm.pid, "THP_enabled") == "0"
        assert _rollup_kib(vm.pid, "AnonHugePages") == 0  # the booted guest's RAM is in 4 KiB pages
        assert "tcg,tb-size=64" in vm.qemu.argv()
        assert vm.exec_collect(["true"], timeout=60).exit_code == 0
    with LinuxVm(replace(cfg, tcg_huge_pages=True, tcg_tb_size_mib=None)) as vm:
        assert vm.pid is not None and vm.qemu is not None
        assert _status(vm.pid, "THP_enabled") == "1"
        assert "tcg" in vm.qemu.argv() and not any("tb-size" in a for a in vm.qemu.argv())
