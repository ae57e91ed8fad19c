"""Smoke tests of the benchmark scripts: each measures what its names say, and its figures are data.

They run each script's ``measure()`` with a few iterations through the ``metrics`` fixture
(tests/conftest.py), which records every figure with its unit and machine. Nothing here asserts
how fast anything is (docs/benchmarks.md).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from benchmarks import agent_exec, ensure_installed, fast_start, kernel_phase
from benchmarks import images as images_bench
from benchmarks.figures import Figures

from vz_linux import KernelProfile, layout
from vz_linux.arch import Architecture

ROOT = Path(__file__).resolve().parent.parent


def _assert_timed(figures: Figures, name: str) -> None:
    p50, p95 = figures.get(f"{name}_p50"), figures.get(f"{name}_p95")
    assert p50.unit == p95.unit == "ms"
    assert 0 < p50.value <= p95.value
    assert p50.machine["cpus"] == os.cpu_count() and p50.machine["machine"]


def test_ensure_installed_measures_both_resolution_paths(metrics: Figures, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    saved = dict(os.environ)
    monkeypatch.setattr(layout, "default_out_root", layout.default_out_root)  # restored afterwards
    try:
        via = ensure_installed.measure(metrics, KernelProfile.container, 3, tmp_path)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    # The A/B is only meaningful if A offers a source and B resolves from the installed files alone.
    assert via == {"ensure_with_source": "$VZ_LINUX_CONTAINER_BUNDLE_DIR", "ensure_installed_only": None}
    for name in ("ensure_with_source", "ensure_installed_only", "full_rehash"):
        _assert_timed(metrics, name)
    assert metrics.get("bundle_size").value == sum(ensure_installed.SIZES.values())


def test_agent_exec_figures(metrics: Figures) -> None:
    agent_exec.measure(metrics, 5)
    for arch in Architecture:
        raw, packed = metrics.get(f"agent_size_{arch.value}"), metrics.get(f"agent_size_gzip_{arch.value}")
        assert raw.unit == packed.unit == "bytes" and 0 < packed.value < raw.value
    for name in ("ping_rtt", "exec_true_rtt", "exec_true_rtt_raw", "host_spawn_true"):
        _assert_timed(metrics, name)
    assert metrics.get("exec_true_rtt_p50").n == 5


def test_metrics_fixture_records_json_lines(tmp_path: Path) -> None:
    """The fixture's record, end to end in a pytest of its own: one JSON object per figure with its
    name, unit, value, machine and the test's id, appended to $VZ_LINUX_FIGURES_FILE."""
    test = tmp_path / "test_fig.py"
    test.write_text("def test_one(metrics):\n    metrics.put('widget_rate', 2.5, 'count')\n")
    out = tmp_path / "figures.jsonl"
    env = {**os.environ, "VZ_LINUX_FIGURES_FILE": str(out)}
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(ROOT),
                        "-c", str(ROOT / "pyproject.toml"), "--confcutdir", str(ROOT / "tests"),
                        "-p", "tests.conftest", str(test)],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    (record,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert (record["name"], record["unit"], record["value"]) == ("widget_rate", "count", 2.5)
    assert record["dimensions"]["test"].endswith("::test_one")
    assert record["machine"]["cpus"] == os.cpu_count() and record["when"].endswith("Z")


def test_images_pull_figures(metrics: Figures, tmp_path: Path) -> None:
    digest = images_bench.measure_pull(metrics, 2, tmp_path)
    assert digest.startswith("sha256:")  # every pull, cold or again, stored the same manifest
    for name in ("image_pull_cold", "image_pull_again"):
        _assert_timed(metrics, name)


@pytest.mark.vm
@pytest.mark.kernel
@pytest.mark.slow
def test_images_persistent_vm_figures(metrics: Figures, tmp_path: Path, built_bundle: Callable[..., Path]) -> None:
    images_bench.measure_vm(metrics, 1, built_bundle(KernelProfile.container), tmp_path)
    for name in ("vm_persistent_run", "vm_initramfs_run"):
        _assert_timed(metrics, name)
    assert metrics.get("vm_init_ext4").value > 0


@pytest.mark.vm
@pytest.mark.kernel
@pytest.mark.slow
def test_kernel_phase_figures(metrics: Figures, tmp_path: Path, built_bundle: Callable[..., Path]) -> None:
    bundles = {arch: built_bundle(KernelProfile.container, arch) for arch in (Architecture.x86_64,
                                                                               Architecture.arm64)}
    results = kernel_phase.measure(metrics, bundles, 1, tmp_path)
    assert [r.label for r in results] == ["x86_64", "x86_64_off", "arm64", "arm64_off"]
    for r in results:
        _assert_timed(metrics, f"kernel_phase_{r.label}")
        _assert_timed(metrics, f"boot_to_agent_{r.label}")
    for suffix in ("", "_off"):
        ratio = metrics.get(f"kernel_phase_ratio_x86_64_over_arm64{suffix}")
        assert ratio.unit == "ratio" and ratio.value > 0


@pytest.mark.vm
@pytest.mark.kernel
@pytest.mark.slow
def test_fast_start_figures(metrics: Figures, tmp_path: Path, built_bundle: Callable[..., Path]) -> None:
    """One round of the combined fast-start run puts every goal's figure, with plausible values."""
    x86, arm = (built_bundle(KernelProfile.container, a) for a in (Architecture.x86_64, Architecture.arm64))
    saved = dict(os.environ)
    results = fast_start.run(metrics, x86, arm, tmp_path, iterations=1, density_count=1, startup_iterations=1)
    assert dict(os.environ) == saved, "the run's $HOME and cache must not leak"
    assert [r.label for r in results] == ["x86_64 cold", "x86_64 restored", "arm64 cold"]
    assert [s.mode for r in results for s in r.samples] == ["cold", "restored", "cold"]
    for name in ("boot_to_agent_cold", "restore_to_agent", "run_template", "run_cold", "oci_run_template",
                 "oci_run_cold", "floor_to_agent", "vz_linux_version", "import_vz_linux"):
        _assert_timed(metrics, name)
    for name in ("restore_over_cold_p50", "run_template_over_cold_p50", "oci_run_template_over_cold_p50",
                 "kernel_phase_ratio_x86_64_over_arm64"):
        assert metrics.get(name).unit == "ratio" and metrics.get(name).value > 0
    assert metrics.get("template_disk_bytes").value > 0 and metrics.get("block_image_disk_bytes").value > 0
    assert 16 < metrics.get("rss_ready_restored_p50").value < metrics.get("rss_ready_cold_p50").value
    assert metrics.get("vms_in_budget_restored").value > 0
