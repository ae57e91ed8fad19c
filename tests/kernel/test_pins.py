"""Kernel pins (linux/kernel-version*.mk) and the reproducible build epoch: 6.12 by default, 6.1 on
request, an unknown pin refused with its own exit code, and the cache keeping both apart."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vz_linux.arch import Architecture
from vz_linux.build.pipeline import config_report, kernel_cache_key
from vz_linux.build.reproducible import build_epoch, build_timestamp, kbuild_identity
from vz_linux.build.sources import available_pins, select_pin
from vz_linux.errors import InvalidConfigError, UnknownKernelPinError
from vz_linux.profiles import KernelProfile

VZ_LINUX = Path(sys.executable).parent / "vz-linux"
TOP = Path(__file__).resolve().parents[2]


def _make_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS")}


def test_default_pin_is_6_12_and_6_1_is_selectable() -> None:
    default = select_pin()
    assert (default.series, default.debian_package) == ("6.12", "linux-source-6.12")
    assert default.version.startswith("6.12.") and default.cache_schema == "2"
    old = select_pin("6.1")
    assert (old.series, old.debian_package, old.cache_schema) == ("6.1", "linux-source-6.1", "2")
    assert old.path == TOP / "linux" / "kernel-version-6.1.mk"
    assert select_pin("6.12") == default  # the default pin is also reachable by its name
    assert set(available_pins()) == {"6.12", "6.1"}


def test_unknown_pin_is_refused_with_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(UnknownKernelPinError, match=r"unknown kernel pin '5\.4'; known pins: 6\.1, 6\.12"):
        select_pin("5.4")
    # A pin file of another series in another linux/ dir is found by its series, not its file name.
    (tmp_path / "kernel-version.mk").write_text((TOP / "linux" / "kernel-version.mk").read_text())
    (tmp_path / "kernel-version-6.6.mk").write_text(
        (TOP / "linux" / "kernel-version-6.1.mk").read_text().replace("6.1", "6.6"))
    assert select_pin("6.6", linux=tmp_path).debian_package == "linux-source-6.6"
    with pytest.raises(UnknownKernelPinError):
        select_pin("6.1", linux=tmp_path)


@pytest.mark.parametrize("argv", [
    [str(VZ_LINUX), "config", "--profile", "container", "--kernel-pin", "5.4"],
    [str(VZ_LINUX), "build", "--profile", "container", "--kernel-pin", "5.4", "--out", "/nonexistent/never"],
])
def test_cli_unknown_pin_is_one_line_exit_22(argv: list[str]) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 22, proc.stderr
    assert "Traceback" not in proc.stderr
    [line] = proc.stderr.strip().splitlines()
    assert "unknown kernel pin '5.4'" in line and "6.1, 6.12" in line
    assert not Path("/nonexistent/never").exists()


def test_makefile_unknown_pin_fails_with_22() -> None:
    proc = subprocess.run(["make", "-s", "-C", str(TOP / "linux"), "kernel-config-summary",
                           "KERNEL_PROFILE=container", "KERNEL_PIN=5.4"],
                          capture_output=True, text=True, timeout=120, env=_make_env())
    assert proc.returncode != 0
    assert "unknown kernel pin '5.4'" in proc.stderr and "Error 22" in proc.stderr


@pytest.mark.kernel
def test_makefile_pin_6_1_resolves_linux_6_1() -> None:
    proc = subprocess.run(["make", "-s", "-C", str(TOP / "linux"), "kernel-config-summary",
                           "KERNEL_PROFILE=container", "ARCH=x86_64", "KERNEL_PIN=6.1"],
                          capture_output=True, text=True, timeout=600, env=_make_env())
    assert proc.returncode == 0, proc.stderr
    assert "container/x86_64: Linux 6.1.192 " in proc.stdout and " 0 failed" in proc.stdout
    assert "device_mapper" in proc.stdout and "dm_crypt" in proc.stdout


@pytest.mark.kernel
def test_cache_key_differs_per_pin_and_schema() -> None:
    x86 = Architecture.x86_64
    new, old = select_pin(), select_pin("6.1")
    report_new = config_report(KernelProfile.container, x86)
    report_old = config_report(KernelProfile.container, x86, kernel_pin="6.1")
    assert report_new.resolved.source.info.version == new.version
    assert report_old.resolved.source.info.version == old.version
    keys = {kernel_cache_key(report_new, new), kernel_cache_key(report_old, old)}
    # The same resolved config under another schema is another key too.
    bumped = dataclasses.replace(new, cache_schema="3")
    keys.add(kernel_cache_key(report_new, bumped))
    assert len(keys) == 3
    assert kernel_cache_key(report_new, new) == kernel_cache_key(report_new, select_pin())  # deterministic


def test_build_epoch_comes_from_the_pin_not_the_clock() -> None:
    pin = select_pin()
    assert build_epoch(pin, environ={}) == pin.source_date_epoch == 1795859651
    assert build_epoch(select_pin("6.1"), environ={}) == 1795713176
    assert build_epoch(pin, environ={"SOURCE_DATE_EPOCH": "1234"}) == 1234
    assert build_epoch(pin, environ={"SOURCE_DATE_EPOCH": ""}) == pin.source_date_epoch
    for bad in ("-5", "12ab", "1e9", " 7"):
        with pytest.raises(InvalidConfigError, match="SOURCE_DATE_EPOCH"):
            build_epoch(pin, environ={"SOURCE_DATE_EPOCH": bad})
    ident = kbuild_identity(1795859651)
    assert ident["KBUILD_BUILD_TIMESTAMP"] == build_timestamp(1795859651) == "Sat Nov 28 09:54:11 UTC 2026"
    # The kernel's usr/gen_initramfs.sh reads the timestamp back with date -d: it must round-trip.
    back = subprocess.run(["date", "-u", "-d", ident["KBUILD_BUILD_TIMESTAMP"], "+%s"],
                          capture_output=True, text=True, check=True).stdout.strip()
    assert back == "1795859651"
