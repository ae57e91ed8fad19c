"""Smoke test of benchmarks/distribution.py: it measures what its names say (docs/benchmarks.md), on a
small real bundle, never how fast."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from benchmarks import distribution
from benchmarks.figures import Figures

from vz_linux.profiles import KernelProfile

from ..foundation.bundles import make_bundle


def test_distribution_benchmark_figures(metrics: Figures, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REGISTRY_AUTH_FILE", os.environ.get("REGISTRY_AUTH_FILE", ""))  # restored afterwards
    make_bundle(tmp_path / "bundle", KernelProfile.container)
    facts = distribution.measure(metrics, tmp_path / "work", iterations=2, ensure_iterations=5, build_iterations=0,
                                 bundle=tmp_path / "bundle")
    # Each pull really went to the registry (a fresh store), and the timed ensure ran with it stopped.
    assert facts == {"pulled_from_store": False, "registry_stopped": True}
    for name, n in (("install_from_http", 2), ("registry_pull_install", 2), ("ensure_digest_pin_installed", 5)):
        p50, p95 = metrics.get(f"{name}_p50"), metrics.get(f"{name}_p95")
        assert p50.unit == p95.unit == "ms" and p50.n == n and 0 < p50.value <= p95.value
    assert metrics.get("registry_push").unit == metrics.get("release_make").unit == "ms"
    assert metrics.get("bundle_size").value == sum(p.stat().st_size for p in (tmp_path / "bundle").iterdir())
