"""The arm64 container bundle boots under qemu-system-aarch64 -M virt (TCG) and passes verify --boot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vz_linux.arch import Architecture
from vz_linux.capabilities import REGISTRY
from vz_linux.vm.boot_verify import verify_boot
from vz_linux.vm.linux_vm import LinuxVm, VmConfig
from vz_linux.vm.qemu import Accel

from .test_verify_boot import DID_IT

pytestmark = [pytest.mark.vm, pytest.mark.kernel, pytest.mark.slow]


def test_arm64_boots_and_picks_tcg_by_itself(container_bundle_arm64: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    # No accel passed. The host's verdict is planted as "KVM works" (a fake: this host's KVM does not,
    # docs/vm.md), so only the foreign-arch rule can make this guest use TCG.
    monkeypatch.setenv("VZ_LINUX_CACHE_DIR", str(tmp_path))
    boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    (tmp_path / "accel-verdict.json").write_text(json.dumps({"boot_id": boot_id, "accel": "kvm",
                                                             "reason": "planted: KVM works"}))
    cfg = VmConfig.from_bundle(container_bundle_arm64)
    assert cfg.arch is Architecture.arm64
    with LinuxVm(cfg) as vm:
        assert vm.accel is not None and vm.accel.accel is Accel.tcg
        assert vm.qemu is not None and "-accel" in (argv := vm.qemu.argv())
        assert argv[argv.index("-accel") + 1].split(",")[0] == "tcg"
        hello = vm.wait_for_agent(180)
        assert hello.machine == "aarch64" and hello.release.endswith("-vz-container")
        assert vm.exec_collect(["sh", "-c", "exit 5"]).exit_code == 5


def test_arm64_verify_boot(container_bundle_arm64: Path) -> None:
    declared = set(json.loads((container_bundle_arm64 / "version.json").read_text())["capabilities"])
    result = verify_boot(container_bundle_arm64, accel="tcg", timeout=180)
    assert result.ok
    # Every declared capability was probed, and passed; nothing undeclared is reported as passing.
    probed = {r.capability.value: r for r in result.rows}
    assert declared <= set(probed), sorted(declared - set(probed))
    for name, row in probed.items():
        assert row.declared == (name in declared), name
        if row.declared:
            assert row.passed and row.evidence, (name, row.evidence)
            spec = REGISTRY[row.capability]
            if spec.agent_probe or spec.boot_probe:  # did the thing (docs/agent.md, "Probes")
                assert row.evidence.startswith(f"{name}: ") and DID_IT[name] in row.evidence, row.evidence
    data = result.to_json()
    assert data["ok"] and {r["capability"] for r in data["rows"]} == declared
    assert all(r["evidence"] and r["seconds"] > 0 for r in data["rows"])
