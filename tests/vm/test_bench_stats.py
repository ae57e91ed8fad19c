"""Benchmark statistics and interleaving, and CLI input errors (no VM booted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from vz_linux.vm.bench import BenchGuest, BenchOptions, BootSample, Summary, interleave, percentile, run_bench
from vz_linux.vm.linux_vm import VmConfig


def test_nearest_rank_percentiles() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50 and percentile(values, 95) == 95 and percentile(values, 99) == 99
    s = Summary.of([3.0, 1.0, 2.0, 10.0])
    assert (s.min, s.median, s.max, s.p95, s.n) == (1.0, 2.5, 10.0, 10.0, 4)
    assert s.mean == 4.0


def test_compare_interleaves_a_b(tmp_path: Path) -> None:
    k = tmp_path / "k"
    k.write_bytes(b"x")
    a, b = BenchGuest("A", VmConfig(kernel=k)), BenchGuest("B", VmConfig(kernel=k))
    assert [(g.label, i) for g, i in interleave([a, b], 2)] == [("A", 1), ("B", 1), ("A", 2), ("B", 2)]
    order: list[str] = []

    def fake_boot(g: BenchGuest, i: int, o: BenchOptions, log: object) -> BootSample:
        order.append(g.label)
        return BootSample(g.label, i, 1.0 if g.label == "A" else 2.0, {})

    res = run_bench([a, b], BenchOptions(iterations=3), boot=fake_boot)
    assert order == ["A", "B"] * 3
    assert res[0].total().median / res[1].total().median == 0.5


def _bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", "from vz_linux.cli.bench import main; main()", *args],
                          capture_output=True, text=True, timeout=120)


def test_cli_bad_input_is_one_line(tmp_path: Path) -> None:
    p = _bench("--bundle-dir", str(tmp_path / "missing"), "--iterations", "1", "--accel", "tcg")
    assert p.returncode not in (0, 1) and "Traceback" not in p.stderr
    assert "vz-linux-bench: error:" in p.stderr
    p = _bench("--iterations", "0")
    assert p.returncode == 2 and "Traceback" not in p.stderr


def test_cli_has_every_seed_flag() -> None:
    out = _bench("--help").stdout
    for flag in ("--bundle-dir", "--iterations", "--timeout-secs", "--guest-logs", "--http-smoke-url",
                 "--guest-log-command", "--retry-log-every", "--rootfs-dir", "--kernel", "--initramfs",
                 "--install-dir", "--no-version-check", "--serial-logs", "--serial-log-dir",
                 "--http-smoke-timeout-secs", "--guest-log-timeout-secs", "--json", "--compare"):
        assert flag in out, flag
