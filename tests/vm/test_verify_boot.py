"""`vz-linux verify DIR --boot`: live probes pass for the real bundle and fail for a false claim."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.vm, pytest.mark.kernel, pytest.mark.slow]


def _verify(bundle: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", "from vz_linux.cli.main import main; main()", "verify",
                           str(bundle), "--boot", *extra], capture_output=True, text=True, timeout=600)


def test_every_declared_capability_passes(container_bundle: Path) -> None:
    declared = json.loads((container_bundle / "version.json").read_text())["capabilities"]
    table = _verify(container_bundle)
    assert table.returncode == 0, table.stdout + table.stderr
    assert "live capability probes" in table.stdout and "-vz-container" in table.stdout
    p = _verify(container_bundle, "--json")
    assert p.returncode == 0, p.stdout + p.stderr
    rows = {r["capability"]: r for r in json.loads(p.stdout)["boot"]["rows"]}
    assert sorted(rows) == sorted(declared)
    for cap in declared:
        assert rows[cap]["declared"] and rows[cap]["passed"], rows[cap]
        assert rows[cap]["evidence"], cap


def test_false_claim_fails_the_boot_check(container_bundle: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad-bundle"
    shutil.copytree(container_bundle, bad)
    meta_path = bad / "version.json"
    meta = json.loads(meta_path.read_text())
    assert "tun" not in meta["capabilities"]  # the container profile turns TUN off
    meta["capabilities"] = sorted([*meta["capabilities"], "tun"])
    meta_path.write_text(json.dumps(meta, indent=2))
    # The metadata is still self-consistent (checksums cover the artifacts): plain verify accepts it ...
    plain = subprocess.run([sys.executable, "-c", "from vz_linux.cli.main import main; main()", "verify",
                            str(bad)], capture_output=True, text=True, timeout=120)
    assert plain.returncode == 0, plain.stderr
    # ... and only booting it shows the kernel cannot do it.
    p = _verify(bad)
    assert p.returncode == 44, p.stdout + p.stderr  # docs/vm.md: CapabilityProbeError
    assert "tun" in p.stderr and "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr  # one line; the table is on stdout
    assert "FAIL" in p.stdout and "tun" in p.stdout
