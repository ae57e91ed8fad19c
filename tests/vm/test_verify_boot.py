"""`vz-linux verify DIR --boot`: every declared capability proved by doing it, in one boot, with its
evidence in the table; a false claim fails naming the probe that failed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from vz_linux.capabilities import REGISTRY
from vz_linux.profiles import KernelCapability

pytestmark = [pytest.mark.vm, pytest.mark.kernel, pytest.mark.slow]

# What each agent probe's evidence must say it did (docs/agent.md, "Probes").
DID_IT = {
    "io_uring": "NOP submitted and completed",
    "seccomp": "getppid denied with EPERM",
    "netns": "ping reply in",
    "overlayfs": "copied up to upper",
    "virtiofs": "read the host's token",
    "vsock": "listening on port",
    "hvc0_serial": "bytes to /dev/hvc0",
    "btrfs_snapshots": "snap/file still 'before'",
    "nfsd": "LISTEN on 127.0.0.1:2049",
    "device_mapper": "write landed at the mapped offset; removed",
    "dm_crypt": "backing holds ciphertext",
    # a boot of its own from an ext4 disk (vz_linux.vm.root_probe)
    "ext4_root": "/ is ext4 on /dev/vda (mountinfo), token",
}


def _verify(bundle: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    # Wide enough that rich prints each row on one line.
    return subprocess.run([sys.executable, "-c", "from vz_linux.cli.main import main; main()", "verify",
                           str(bundle), "--boot", *extra], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "COLUMNS": "320"})


def table_rows(stdout: str) -> dict[str, list[str]]:
    """capability -> [declared, outcome, evidence] from the probe table."""
    rows: dict[str, list[str]] = {}
    names = {c.value for c in KernelCapability}
    for line in stdout.splitlines():
        cells = [c.strip() for c in line.strip().strip("│").split("│")]
        if len(cells) == 4 and cells[0] in names:
            rows[cells[0]] = cells[1:]
    return rows


def test_every_declared_capability_passes_with_evidence(container_bundle: Path) -> None:
    declared = json.loads((container_bundle / "version.json").read_text())["capabilities"]
    p = _verify(container_bundle)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "live capability probes" in p.stdout and "-vz-container" in p.stdout
    rows = table_rows(p.stdout)
    assert sorted(rows) == sorted(declared)
    for cap in declared:
        is_declared, outcome, evidence = rows[cap]
        assert is_declared == "yes" and outcome == "pass" and evidence, (cap, rows[cap])
        if REGISTRY[KernelCapability(cap)].agent_probe or REGISTRY[KernelCapability(cap)].boot_probe:
            assert evidence.startswith(f"{cap}: "), (cap, evidence)
            assert DID_IT[cap] in evidence, (cap, evidence)


def test_false_claim_fails_naming_the_probe(container_bundle: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad-bundle"
    shutil.copytree(container_bundle, bad)
    meta_path = bad / "version.json"
    meta = json.loads(meta_path.read_text())
    # The container profile turns TUN and KVM off: a snippet probe and an agent probe must fail.
    assert "tun" not in meta["capabilities"] and "nested_virt" not in meta["capabilities"]
    meta["capabilities"] = sorted([*meta["capabilities"], "tun", "nested_virt"])
    meta_path.write_text(json.dumps(meta, indent=2))
    # The metadata is still self-consistent (checksums cover the artifacts): plain verify accepts it ...
    plain = subprocess.run([sys.executable, "-c", "from vz_linux.cli.main import main; main()", "verify",
                            str(bad)], capture_output=True, text=True, timeout=120)
    assert plain.returncode == 0, plain.stderr
    # ... and only booting it shows the kernel cannot do it.
    p = _verify(bad)
    assert p.returncode == 44, p.stdout + p.stderr  # docs/vm.md: CapabilityProbeError
    assert "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr  # one line; the table is on stdout
    assert "tun (" in p.stderr and "nested_virt (open /dev/kvm: No such file or directory" in p.stderr
    rows = table_rows(p.stdout)
    assert rows["tun"][1] == "FAIL" and rows["nested_virt"][1] == "FAIL"
    # Under TCG with -cpu max the x86_64 guest is offered AMD's SVM (docs/agent.md, "Probes").
    assert "guest CPU offers" in rows["nested_virt"][2]
    assert all(r[1] == "pass" for cap, r in rows.items() if cap not in ("tun", "nested_virt")), rows
