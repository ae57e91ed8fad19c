"""`vz-linux-bench --snapshot --cold --plot` and the smoke test of benchmarks/snapshot.py, on real
VMs (TCG). They check that each measures what its names say, never how fast (docs/benchmarks.md)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from benchmarks import density
from benchmarks import snapshot as snapshot_bench
from benchmarks.figures import Figures

from .procs import processes_mentioning

pytestmark = [pytest.mark.vm, pytest.mark.kernel, pytest.mark.slow, pytest.mark.timeout(600)]


def test_bench_snapshot_and_cold_side_by_side(container_bundle: Path, tmp_path: Path) -> None:
    env = {**os.environ, "VZ_LINUX_CACHE_DIR": str(tmp_path / "cache"), "TMPDIR": str(tmp_path)}
    out, plot = tmp_path / "bench.json", tmp_path / "bench.svg"
    p = subprocess.run([sys.executable, "-c", "from vz_linux.cli.bench import main; main()", "--bundle-dir",
                        str(container_bundle), "--accel", "tcg", "--iterations", "2", "--snapshot", "--cold",
                        "--json", str(out), "--plot", str(plot)],
                       env=env, capture_output=True, text=True, timeout=500)
    assert p.returncode == 0, p.stderr
    assert "template made in" in p.stderr
    data = json.loads(out.read_text())
    by_mode = {m: [s for s in data["samples"] if s["mode"] == m] for m in ("cold", "restored")}
    assert [s["iteration"] for s in by_mode["cold"]] == [s["iteration"] for s in by_mode["restored"]] == [1, 2]
    for s in by_mode["restored"]:
        assert set(s["phases"]) == {"vmm", "load", "agent"}
        assert abs(sum(s["phases"].values()) - s["total_s"]) < 0.01  # the phases cover the whole restore
        assert s["rss_bytes"] > 0 and s["kernel_release"].endswith("-vz-container")
    for s in by_mode["cold"]:
        assert s["phases"]["kernel"] is not None and "load" not in s["phases"]
    # Interleaved (the progress lines, in the order the boots ran): cold 1, restored 1, cold 2, restored 2.
    order = re.findall(r"\((cold|restored)\) #(\d): \d+ ms", p.stderr)
    assert order == [("cold", "1"), ("restored", "1"), ("cold", "2"), ("restored", "2")], p.stderr
    assert data["summary"][f"{container_bundle} (restored)"]["template"]["disk_bytes"] > 0
    ids = set(re.findall(r'id="(bar-(?:cold|restored)-0-\d-[a-z]+)"', plot.read_text()))
    assert {"bar-restored-0-1-load", "bar-restored-0-2-load", "bar-cold-0-1-kernel", "bar-cold-0-2-kernel"} <= ids
    assert processes_mentioning(str(tmp_path)) == []


def test_snapshot_benchmark_figures(container_bundle: Path, tmp_path: Path, metrics: Figures) -> None:
    results = snapshot_bench.measure(metrics, container_bundle, 2, tmp_path, template_builds=1)
    assert [r.mode for r in results] == ["cold", "restored"]
    for name in ("boot_to_agent_cold", "restore_to_agent", "run_true_template", "run_true_cold", "template_build",
                 "restore_phase_vmm", "restore_phase_load", "restore_phase_agent"):
        p50, p95 = metrics.get(f"{name}_p50"), metrics.get(f"{name}_p95")
        assert p50.unit == p95.unit == "ms" and 0 < p50.value <= p95.value, name
    ratio = metrics.get("restore_over_cold_p50")
    assert ratio.unit == "ratio"
    assert ratio.value == pytest.approx(results[1].total().median / results[0].total().median)
    assert metrics.get("rss_ready_cold_p50").unit == metrics.get("rss_ready_restored_p50").unit == "MiB"
    state = metrics.get("template_state_bytes")
    assert state.unit == "bytes" and 0 < state.value <= metrics.get("template_disk_bytes").value + 4096
    assert os.environ.get("VZ_LINUX_CACHE_DIR") != str(tmp_path / "cache-1")  # the benchmark put it back


def test_density_figures(container_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """benchmarks/density.py holds the VMs at once and reads each QEMU's PSS; no QEMU is left after."""
    monkeypatch.setenv("VZ_LINUX_CACHE_DIR", str(tmp_path / "cache"))  # the template goes there
    figures = Figures(echo=False)
    result = density.measure_density(container_bundle, 2, 0.5, budget_mib=1024)
    assert set(result) == {"cold", "restored"}
    for d in result.values():
        assert d.count == 2 and len(d.pss_mib) == len(d.rss_mib) == 2
        assert all(0 < p <= r for p, r in zip(d.pss_mib, d.rss_mib, strict=True))
        assert d.vms_in_budget == int(1024 // d.pss_mean)
    density.measure(figures, container_bundle, 1, 0.0)
    assert {f.name for f in figures.figures} == {"pss_idle_cold_mean", "pss_idle_restored_mean", "rss_idle_cold_mean",
                                                 "rss_idle_restored_mean", "vms_in_budget_cold",
                                                 "vms_in_budget_restored"}
    assert not processes_mentioning(str(container_bundle / "vmlinux"))
