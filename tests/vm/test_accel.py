"""Accelerator choice: auto must prove KVM works (docs/vm.md: here /dev/kvm exists but is broken)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from vz_linux.errors import InvalidConfigError
from vz_linux.vm.accel import KVM_DEVICE, AccelChoice, resolve_accel
from vz_linux.vm.qemu import Accel


def test_explicit_choices() -> None:
    assert resolve_accel("tcg").accel is Accel.tcg
    with pytest.raises(InvalidConfigError):
        resolve_accel("hvf")


def test_auto_probes_and_caches_per_host_boot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VZ_LINUX_CACHE_DIR", str(tmp_path))
    cache = tmp_path / "accel-verdict.json"
    boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    # A verdict left by another boot of this host is not this boot's: it must be probed again.
    cache.write_text(json.dumps({"boot_id": "another-boot", "accel": "kvm", "reason": "planted, stale"}))
    first = resolve_accel(AccelChoice.auto)
    assert first.reason and "cached" not in first.reason and "planted" not in first.reason
    assert json.loads(cache.read_text())["boot_id"] == boot_id  # the fresh verdict replaced it
    second = resolve_accel(AccelChoice.auto)
    assert second.accel is first.accel and "cached" in second.reason
    if not KVM_DEVICE.exists():
        assert first.accel is Accel.tcg
    # This boot's verdict is trusted as it stands, without a probe (whatever it says).
    cache.write_text(json.dumps({"boot_id": boot_id, "accel": "kvm", "reason": "planted for this boot"}))
    third = resolve_accel(AccelChoice.auto)
    assert third.accel is Accel.kvm and third.reason.startswith("planted for this boot")


@pytest.mark.skipif(not KVM_DEVICE.exists(), reason="the probe guest needs /dev/kvm")
def test_probe_guest_itself_is_correct() -> None:
    # The same real-mode guest with a 1000-iteration loop finishes even on a crawling KVM: proves the
    # probe code is right, so a timeout of the full probe means KVM is too slow, not a bug.
    code = ("import vz_linux.vm.accel as a;"
            "a._GUEST_CODE = bytes.fromhex('66b9e8030000' '6649' '75fc' 'b042' 'e610' 'f4');"
            "a.kvm_smoke_test()")
    proc = subprocess.run([sys.executable, "-c", code], timeout=120, capture_output=True)
    assert proc.returncode == 0, proc.stderr
