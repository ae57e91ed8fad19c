"""The real `vz-linux` console script: exit codes, one-line errors, JSON output."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from vz_linux import KernelProfile
from vz_linux.errors import all_error_classes
from vz_linux.hashing import sha256_file

from .bundles import flip_byte, make_bundle
from .conftest import REPO, VZ_LINUX, clean_env


def vz(home: Path, *args: str, env_home: bool = True, **extra: str) -> subprocess.CompletedProcess[str]:
    env = clean_env(home, **extra)
    if not env_home:
        env.pop("HOME")
    return subprocess.run([str(VZ_LINUX), *args], env=env, capture_output=True, text=True, timeout=120)


def assert_one_line_error(r: subprocess.CompletedProcess[str], code: int, *needles: str) -> None:
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("vz-linux: error: ")
    assert "Traceback" not in r.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def test_error_classes_have_distinct_exit_codes() -> None:
    classes = all_error_classes()
    codes = [c.exit_code for c in classes]
    assert len(classes) > 20
    assert len(set(codes)) == len(codes), sorted(codes)
    assert all(c not in (0, 2, 130) for c in codes if c != 1)  # 2 = usage, 130 = interrupted


DOC_TABLES = ("selection.md", "profiles.md", "vm.md", "oci.md")
_ROW = re.compile(r"^\|\s*(\d+)\s*\|\s*`(\w+Error)`\s*\|", re.MULTILINE)


def test_every_exit_code_is_the_one_its_docs_table_states() -> None:
    documented: dict[str, int] = {}
    for name in DOC_TABLES:
        for code, cls in _ROW.findall((REPO / "docs" / name).read_text()):
            assert cls not in documented, f"{cls} is in two exit-code tables"
            documented[cls] = int(code)
    actual = {c.__name__: c.exit_code for c in all_error_classes() if c.__name__ != "VzLinuxError"}
    assert documented == actual


def test_build_refuses_an_unknown_initramfs_compression(tmp_path: Path) -> None:
    r = vz(tmp_path, "build", "--profile", "container", "--initramfs-compression", "zstd",
           "--out", str(tmp_path / "out"))
    assert_one_line_error(r, 94, "unknown initramfs compression 'zstd'", "none, gzip, lz4")
    assert not (tmp_path / "out").exists()  # refused before anything was built


def test_verify_good_and_json(tmp_path: Path) -> None:
    meta = make_bundle(tmp_path / "b")
    r = vz(tmp_path, "verify", str(tmp_path / "b"))
    assert r.returncode == 0, r.stderr
    assert "every checksum matches" in r.stdout
    r = vz(tmp_path, "verify", str(tmp_path / "b"), "--json")
    data = json.loads(r.stdout)
    assert data["ok"] is True and data["profile"] == "developer"
    assert data["capabilities"] == sorted(c.value for c in KernelProfile.developer.contract)
    assert data["files"]["vmlinux"] == str(tmp_path / "b" / "vmlinux")
    assert data["kernel"] == meta.kernel


@pytest.mark.parametrize("name", ["vmlinux", "initramfs.img", "crun"])
def test_verify_hand_corrupted_bundle(tmp_path: Path, name: str) -> None:
    make_bundle(tmp_path / "b")
    before = sha256_file(tmp_path / "b" / name)
    flip_byte(tmp_path / "b" / name)
    r = vz(tmp_path, "verify", str(tmp_path / "b"))
    assert_one_line_error(r, 14, f"{name}: expected sha256 {before}, found {sha256_file(tmp_path / 'b' / name)}")
    r = vz(tmp_path, "verify", str(tmp_path / "b"), "--json")
    assert r.returncode == 14
    data = json.loads(r.stdout)
    assert data["ok"] is False and data["error"] == "ChecksumMismatchError" and name in data["message"]


def test_verify_errors(tmp_path: Path) -> None:
    make_bundle(tmp_path / "b", agent="9.9.9")
    assert_one_line_error(vz(tmp_path, "verify", str(tmp_path / "b")), 11, "9.9.9", "--no-version-check")
    assert vz(tmp_path, "verify", str(tmp_path / "b"), "--no-version-check").returncode == 0
    assert_one_line_error(vz(tmp_path, "verify", str(tmp_path / "nope")), 10, "does not exist")
    (tmp_path / "b" / "version.json").write_text('{"kernel": ')
    assert_one_line_error(vz(tmp_path, "verify", str(tmp_path / "b")), 19, "truncated")
    make_bundle(tmp_path / "c", protocol=None)
    assert_one_line_error(vz(tmp_path, "verify", str(tmp_path / "c")), 12)
    make_bundle(tmp_path / "d", protocol=7)
    assert_one_line_error(vz(tmp_path, "verify", str(tmp_path / "d")), 13, "revision 7")


def test_verify_symlink_in_bundle(tmp_path: Path) -> None:
    make_bundle(tmp_path / "b")
    (tmp_path / "b" / "crun").rename(tmp_path / "crun")
    (tmp_path / "b" / "crun").symlink_to(tmp_path / "crun")
    assert_one_line_error(vz(tmp_path, "verify", str(tmp_path / "b")), 20, "symlink")


def test_ensure_and_install(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    meta = make_bundle(tmp_path / "c", KernelProfile.container)
    # (an explicit install dir keeps a real bundle in this checkout's linux/out out of the picture)
    inst = ("--install-dir", str(tmp_path / "inst"))
    r = vz(home, "ensure", "--profile", "container", "--require", "nfsd,io_uring", "--require", "vsock",
           "--json", *inst, VZ_LINUX_CONTAINER_BUNDLE_DIR=str(tmp_path / "c"))
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["root"] == str(tmp_path / "inst")
    assert data["source_reason"] == "$VZ_LINUX_CONTAINER_BUNDLE_DIR"
    # nothing to install any more: the installed bundle is returned
    r = vz(home, "ensure", "--profile", "container", "--json", *inst)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["source"] is None and json.loads(r.stdout)["kernel"] == meta.kernel
    # install DIR uses the bundle's own profile; --install-dir overrides
    make_bundle(tmp_path / "d")
    r = vz(home, "install", str(tmp_path / "d"), "--install-dir", str(tmp_path / "custom"))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "custom" / "vmlinux").is_file()
    r = vz(home, "install", str(tmp_path / "d"), "--json")
    assert json.loads(r.stdout)["root"] == str(home / ".vz" / "linux" / "developer")


def test_ensure_errors(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    make_bundle(tmp_path / "b")
    assert_one_line_error(vz(home, "ensure", "--profile", "gaming"), 18, "valid: developer, container")
    assert_one_line_error(vz(home, "ensure", "--require", "gpu"), 18, "valid: vsock")
    assert_one_line_error(vz(home, "ensure", "--bundle-dir", str(tmp_path / "b"), "--require", "nfsd,container_sandbox"),
                          15, "container_sandbox, nfsd")
    assert_one_line_error(vz(home, "ensure", "--profile", "container", "--bundle-dir", str(tmp_path / "b")),
                          16, "developer bundle, not container")
    assert_one_line_error(vz(home, "ensure", env_home=False), 17, "$HOME")
    assert_one_line_error(vz(home, "ensure", "--install-dir", str(tmp_path / "empty")), 10, "vz-linux build")
    (tmp_path / "f").write_text("")
    assert_one_line_error(vz(home, "install", str(tmp_path / "b"), "--install-dir", str(tmp_path / "f" / "x")),
                          21, "cannot create install dir")
    assert_one_line_error(vz(home, "install", str(tmp_path / "b"), "--profile", "container"), 16)
