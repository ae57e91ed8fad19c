"""Reproducible userland (docs/reproducible.md): two builds of the same inputs — another directory,
another user, another time — give byte-identical initramfs.img, version.json, crun and agent."""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

import pytest

from vz_linux import layout
from vz_linux.arch import Architecture
from vz_linux.build import doublebuild
from vz_linux.build.assemble import build_time
from vz_linux.build.reproducible import build_epoch
from vz_linux.errors import NotReproducibleError
from vz_linux.run import run


def test_built_is_the_build_epoch_not_the_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    assert build_time() == build_time(build_epoch())
    # Another process ten days later (faketime) computes the same `built`, though its clock moved.
    code = "import time; from vz_linux.build.assemble import build_time; print(int(time.time()), build_time())"
    now, built = run(["faketime", "-f", "+10d", sys.executable, "-c", code]).stdout.decode().split()
    assert int(now) > time.time() + 9 * 86400
    assert built == build_time()
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "86400")
    assert build_time() == "1970-01-02T00:00:00Z"


def test_compare_reports_a_differing_file_with_diffoscope_detail(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "version.json").write_text('{"built": "2026-01-01T00:00:00Z"}\n')
    (b / "version.json").write_text('{"built": "2026-01-11T00:00:00Z"}\n')
    (a / "same").write_text("x")
    (b / "same").write_text("x")
    (a / "only-a").write_text("y")
    names, diffs = doublebuild.compare({p.name: p for p in a.iterdir()}, {p.name: p for p in b.iterdir()})
    assert names == ["only-a", "same", "version.json"]
    by_name = {d.name: d for d in diffs}
    assert set(by_name) == {"only-a", "version.json"}
    assert "2026-01-11" in by_name["version.json"].detail and "2026-01-01" in by_name["version.json"].detail
    result = doublebuild.DoubleBuild(*doublebuild.make_variants(tmp_path / "w"), compared=names, diffs=diffs)
    with pytest.raises(NotReproducibleError) as e:
        doublebuild.raise_if_different(result)
    assert e.value.exit_code == 23 and "version.json" in str(e.value)


@pytest.mark.kernel
@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_two_userland_builds_are_byte_identical() -> None:
    """The CI-sized double build: the cached kernel and crun, the agent compiled twice, initramfs and
    version.json written twice; build B from a deeper copy of the checkout, as uid 65534, ten days
    later. (Not in tmp_path: pytest's base dir is 0700, and B's user must reach its tree.)"""
    work = Path(tempfile.mkdtemp(prefix="vz-linux-repro-test-"))
    work.chmod(0o755)
    try:
        result = doublebuild.double_build(work / "w", reuse_crun=True)
        _check(result)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _check(result: doublebuild.DoubleBuild) -> None:
    arch = Architecture.host()
    assert set(result.compared) >= {*layout.BUNDLE_FILES, f"agent/{arch.value}/vz-agent"}
    assert result.b.top != result.a.top and result.b.other_user and result.b.clock_offset_days
    assert (result.b.out / layout.METADATA).stat().st_uid == doublebuild.OTHER_UID  # really another user
    assert result.diffs == [], "\n".join(doublebuild.describe(result))
