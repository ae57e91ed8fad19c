"""Selection API: resolution order, installs, legacy fallback, bad input."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from vz_linux import (
    KernelBundleOptions,
    KernelCapability,
    KernelProfile,
    ensure_kernel,
    ensure_kernel_bundle,
    ensure_kernel_profile,
    layout,
)
from vz_linux.bundle.install import load_installed, read_install_record
from vz_linux.bundle.model import validate_bundle
from vz_linux.bundle.resolve import resolve
from vz_linux.errors import (
    ChecksumMismatchError,
    InstallError,
    InvalidConfigError,
    MissingArtifactsError,
    MissingCapabilitiesError,
    NoHomeDirectoryError,
    ProfileMismatchError,
    UnsafeBundleError,
)

from .bundles import flip_byte, make_bundle
from .conftest import PYTHON, VZ_LINUX, clean_env


def test_installs_into_profile_dir_then_fast_path(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    meta = make_bundle(tmp_path / "c", KernelProfile.container)
    monkeypatch.setenv("VZ_LINUX_CONTAINER_BUNDLE_DIR", str(tmp_path / "c"))
    b = ensure_kernel_profile(KernelProfile.container)
    assert b.root == home / ".vz" / "linux" / "container"
    assert b.metadata == meta
    validate_bundle(b.root)  # a full re-hash of the install agrees
    ino = (b.root / "vmlinux").stat().st_ino
    again = ensure_kernel_profile("container")
    assert (again.root / "vmlinux").stat().st_ino == ino  # identical: not reinstalled
    rec = read_install_record(b.root)
    assert rec is not None and set(rec.files) == {"vmlinux", "initramfs.img", "crun"}


def test_new_bundle_replaces_install(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_bundle(tmp_path / "v1")
    monkeypatch.setenv("VZ_LINUX_BUNDLE_DIR", str(tmp_path / "v1"))
    first = ensure_kernel()
    v2 = make_bundle(tmp_path / "v2", kernel="6.1.159")
    monkeypatch.setenv("VZ_LINUX_BUNDLE_DIR", str(tmp_path / "v2"))
    second = ensure_kernel()
    assert second.root == first.root and second.metadata == v2
    assert validate_bundle(second.root).metadata.kernel == "6.1.159"
    assert not [p for p in second.root.parent.iterdir() if ".install-" in p.name or ".old-" in p.name]


def test_resolution_order(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("caller", "profile_env", "generic_env", "checkout"):
        make_bundle(tmp_path / name, kernel=f"6.1.{len(name)}")
    out = layout.default_out_root()
    make_bundle(out)  # the developer bundle of the (redirected) source checkout
    monkeypatch.setenv("VZ_LINUX_DEVELOPER_BUNDLE_DIR", str(tmp_path / "profile_env"))
    monkeypatch.setenv("VZ_LINUX_BUNDLE_DIR", str(tmp_path / "generic_env"))
    opts = KernelBundleOptions(bundle_dir=tmp_path / "caller")
    assert resolve(opts).source == tmp_path / "caller"
    assert resolve(KernelBundleOptions()).source == tmp_path / "profile_env"
    # The profile variable of another profile does not apply.
    assert resolve(KernelBundleOptions(profile=KernelProfile.container)).source == tmp_path / "generic_env"
    monkeypatch.delenv("VZ_LINUX_DEVELOPER_BUNDLE_DIR")
    assert resolve(KernelBundleOptions()).source == tmp_path / "generic_env"
    monkeypatch.delenv("VZ_LINUX_BUNDLE_DIR")
    assert resolve(KernelBundleOptions()).source == out
    # the checkout counts only with the default install dir (given explicitly or not)
    default = home / ".vz" / "linux" / "developer"
    assert resolve(KernelBundleOptions(install_dir=default)).source == out
    assert resolve(KernelBundleOptions(install_dir=tmp_path / "custom")).source is None
    # container's checkout bundle lives in out/container: absent here
    assert resolve(KernelBundleOptions(profile=KernelProfile.container)).source is None
    assert ensure_kernel().root == default


def test_custom_install_dir(home: Path, tmp_path: Path) -> None:
    make_bundle(tmp_path / "b")
    target = tmp_path / "deep" / "er" / "install"
    b = ensure_kernel_bundle(KernelBundleOptions(bundle_dir=tmp_path / "b", install_dir=target))
    assert b.root == target and (target / "vmlinux").is_file()
    assert not (home / ".vz").exists()
    # no bundle any more: the installed files are validated and returned
    again = ensure_kernel_bundle(KernelBundleOptions(install_dir=target))
    assert again.metadata == b.metadata


def test_installed_only_is_validated(home: Path, tmp_path: Path) -> None:
    make_bundle(tmp_path / "b")
    installed = ensure_kernel_bundle(KernelBundleOptions(bundle_dir=tmp_path / "b"))
    flip_byte(installed.initramfs)  # in-place write: changes ctime, so the fast path re-hashes
    with pytest.raises(ChecksumMismatchError, match=r"initramfs\.img: expected"):
        ensure_kernel()
    # reinstalling from the bundle repairs it (the record no longer matches -> not "identical")
    repaired = ensure_kernel_bundle(KernelBundleOptions(bundle_dir=tmp_path / "b"))
    validate_bundle(repaired.root)


def test_hand_copied_install_gets_record(home: Path, tmp_path: Path) -> None:
    target = home / ".vz" / "linux" / "developer"
    make_bundle(target)  # as if copied there by hand: no install record
    assert read_install_record(target) is None
    ensure_kernel()
    assert read_install_record(target) is not None
    flip_byte(target / "vmlinux")
    with pytest.raises(ChecksumMismatchError):
        ensure_kernel()


def test_legacy_fallback_developer_only(home: Path) -> None:
    legacy = home / ".vz" / "linux"
    make_bundle(legacy)
    assert ensure_kernel().root == legacy
    with pytest.raises(MissingArtifactsError, match="no container kernel bundle"):
        ensure_kernel_profile(KernelProfile.container)
    # the profile dir wins over legacy once it exists
    make_bundle(legacy / "developer", kernel="6.1.200")
    assert ensure_kernel().metadata.kernel == "6.1.200"


def test_nothing_anywhere(home: Path) -> None:
    with pytest.raises(MissingArtifactsError) as e:
        ensure_kernel()
    assert "vz-linux build" in e.value.one_line()


def test_explicit_bundle_dir_missing(home: Path, tmp_path: Path) -> None:
    with pytest.raises(MissingArtifactsError, match="does not exist"):
        ensure_kernel_bundle(KernelBundleOptions(bundle_dir=tmp_path / "absent"))


def test_profile_mismatch_not_installed(home: Path, tmp_path: Path) -> None:
    make_bundle(tmp_path / "c", KernelProfile.container)
    with pytest.raises(ProfileMismatchError):
        ensure_kernel_bundle(KernelBundleOptions(bundle_dir=tmp_path / "c"))
    assert not (home / ".vz" / "linux" / "developer").exists()


def test_required_capabilities(home: Path, tmp_path: Path) -> None:
    make_bundle(tmp_path / "b")
    opts = KernelBundleOptions(bundle_dir=tmp_path / "b", required_capabilities=frozenset({KernelCapability.nfsd}))
    with pytest.raises(MissingCapabilitiesError, match="nfsd"):
        ensure_kernel_bundle(opts)


def test_corrupted_source_installs_nothing(home: Path, tmp_path: Path) -> None:
    make_bundle(tmp_path / "b")
    flip_byte(tmp_path / "b" / "crun")
    with pytest.raises(ChecksumMismatchError, match="crun: expected"):
        ensure_kernel_bundle(KernelBundleOptions(bundle_dir=tmp_path / "b"))
    parent = home / ".vz" / "linux"
    assert sorted(p.name for p in parent.iterdir()) == [".developer.lock"]


def test_unknown_names_list_valid_ones(home: Path) -> None:
    with pytest.raises(InvalidConfigError, match="valid: developer, container"):
        ensure_kernel_profile("gaming")
    with pytest.raises(InvalidConfigError, match="unknown capability 'gpu'; valid: vsock, virtiofs"):
        KernelBundleOptions(required_capabilities=frozenset({"gpu"}))  # type: ignore[arg-type]


def test_home_unset(home: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("HOME")
    with pytest.raises(NoHomeDirectoryError, match="HOME"):
        ensure_kernel()
    # an explicit install dir needs no $HOME
    make_bundle(tmp_path / "b")
    ensure_kernel_bundle(KernelBundleOptions(bundle_dir=tmp_path / "b", install_dir=tmp_path / "i"))


def test_install_dir_not_creatable(home: Path, tmp_path: Path) -> None:
    make_bundle(tmp_path / "b")
    (tmp_path / "file").write_text("x")
    with pytest.raises(InstallError, match="cannot create install dir"):
        ensure_kernel_bundle(KernelBundleOptions(bundle_dir=tmp_path / "b", install_dir=tmp_path / "file" / "sub"))


def test_install_dir_not_writable(home: Path, tmp_path: Path) -> None:
    """A real unprivileged process (root bypasses permission bits) gets one InstallError."""
    make_bundle(tmp_path / "b")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    for p in (tmp_path, *tmp_path.parents):
        if p == Path("/"):
            break
        p.chmod(p.stat().st_mode | 0o005)  # let 'nobody' traverse to the bundle
    for p in (tmp_path / "b").iterdir():
        p.chmod(p.stat().st_mode | 0o004)
    code = (
        "from pathlib import Path; import sys; from vz_linux import *; from vz_linux.errors import InstallError\n"
        "try:\n"
        f"    ensure_kernel_bundle(KernelBundleOptions(bundle_dir=Path({str(tmp_path / 'b')!r}),"
        f" install_dir=Path({str(ro / 'developer')!r})))\n"
        "except InstallError as e:\n"
        "    print(e.one_line()); sys.exit(21)\n"
    )
    argv = [PYTHON, "-c", code]
    if os.geteuid() == 0:
        argv = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *argv]
    r = subprocess.run(argv, env=clean_env(home, PYTHONPATH=str(Path(__file__).resolve().parents[2] / "src")),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 21, r.stderr
    assert "not writable" in r.stdout
    assert list(ro.iterdir()) == []


@pytest.mark.parametrize("name", ["vmlinux", "crun", "version.json"])
@pytest.mark.parametrize("kind", ["symlink", "fifo"])
def test_unsafe_source_installs_nothing(home: Path, tmp_path: Path, name: str, kind: str) -> None:
    make_bundle(tmp_path / "b")
    target = tmp_path / "b" / name
    target.rename(tmp_path / "real")
    if kind == "symlink":
        target.symlink_to(tmp_path / "real")
    else:
        os.mkfifo(target)  # opening it for reading would block: must be refused, not read
    with pytest.raises(UnsafeBundleError, match="symlink" if kind == "symlink" else "FIFO"):
        ensure_kernel_bundle(KernelBundleOptions(bundle_dir=tmp_path / "b"))
    assert not (home / ".vz" / "linux" / "developer").exists()


def test_verify_rehashes_even_with_a_forged_install_record(home: Path, tmp_path: Path) -> None:
    """`vz-linux verify` never trusts `.vz-install.json` (docs/selection.md): corrupt an installed file,
    then forge the record so the fast path believes it, and verify must still re-hash and fail."""
    make_bundle(tmp_path / "b")
    installed = ensure_kernel_bundle(KernelBundleOptions(bundle_dir=tmp_path / "b")).root
    record_path = installed / layout.INSTALL_RECORD
    assert record_path.is_file()
    flip_byte(installed / "vmlinux")
    record = json.loads(record_path.read_text())
    st = (installed / "vmlinux").lstat()
    record["files"]["vmlinux"].update(ino=st.st_ino, dev=st.st_dev, size=st.st_size, mtime_ns=st.st_mtime_ns,
                                      ctime_ns=st.st_ctime_ns)
    record_path.write_text(json.dumps(record))
    load_installed(installed)  # the forged record fools the fast path: the test really bypasses it ...
    r = subprocess.run([str(VZ_LINUX), "verify", str(installed)], env=clean_env(home), capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 14, r.stdout + r.stderr  # ... and verify re-hashes anyway
    [line] = r.stderr.strip().splitlines()
    assert "vmlinux: expected sha256" in line
