"""`vz vm linux init`: create, idempotent re-run, size mismatch, --force, changed artifacts."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.foundation.bundles import make_bundle
from vz_linux.cli.vz import main as vz_main
from vz_linux.errors import ChecksumMismatchError, DiskImageError, InvalidConfigError, MissingArtifactsError
from vz_linux.hashing import sha256_file
from vz_linux.profiles import KernelProfile
from vz_linux.vm.descriptor import InitRequest, InitStatus, init_vm, verify_descriptor

GIB = 1 << 30


def _explicit(bundle: Path, out: Path, **kw: object) -> InitRequest:
    return InitRequest(name="dev1", output_dir=out, kernel=bundle / "vmlinux", initramfs=bundle / "initramfs.img",
                       version_json=bundle / "version.json", **kw)  # type: ignore[arg-type]


def test_create_writes_descriptor_and_sparse_disk(tmp_path: Path) -> None:
    bundle = tmp_path / "b"
    meta = make_bundle(bundle, KernelProfile.container)
    res = init_vm(_explicit(bundle, tmp_path / "vms", disk_size_gb=2))
    assert res.status is InitStatus.created
    d = json.loads((tmp_path / "vms" / "dev1.linux.json").read_text())
    assert d == res.descriptor
    assert d["schema_version"] == 1 and d["image_name"] == "dev1" and d["profile"] == "container"
    assert d["kernel"] == str((bundle / "vmlinux").resolve())
    assert d["initramfs"] == str((bundle / "initramfs.img").resolve())
    assert d["version_json"] == str((bundle / "version.json").resolve())
    assert d["sha256_kernel"] == meta.sha256_vmlinux == sha256_file(bundle / "vmlinux")
    assert d["sha256_initramfs"] == meta.sha256_initramfs
    assert "6.1.158" in d["artifact_version"] and d["created"].endswith("Z")
    disk = Path(d["disk"]["path"])
    assert disk == tmp_path / "vms" / "dev1.img" and d["disk"]["size_bytes"] == 2 * GIB
    st = disk.stat()
    assert st.st_size == 2 * GIB and st.st_blocks * 512 < 1 << 20  # sparse: nothing allocated


def test_rerun_is_compatible_and_changes_nothing(tmp_path: Path) -> None:
    bundle = tmp_path / "b"
    make_bundle(bundle, KernelProfile.container)
    init_vm(_explicit(bundle, tmp_path / "vms", disk_size_gb=1))
    desc = tmp_path / "vms" / "dev1.linux.json"
    disk = tmp_path / "vms" / "dev1.img"
    with open(disk, "r+b") as f:
        f.write(b"guest data")
    before = (desc.read_bytes(), desc.stat().st_mtime_ns, disk.stat().st_mtime_ns)
    res = init_vm(_explicit(bundle, tmp_path / "vms"))
    assert res.status is InitStatus.compatible
    assert (desc.read_bytes(), desc.stat().st_mtime_ns, disk.stat().st_mtime_ns) == before
    assert disk.read_bytes()[:10] == b"guest data"


def test_wrong_disk_size_is_refused_unless_forced(tmp_path: Path) -> None:
    bundle = tmp_path / "b"
    make_bundle(bundle, KernelProfile.container)
    init_vm(_explicit(bundle, tmp_path / "vms", disk_size_gb=1))
    desc = tmp_path / "vms" / "dev1.linux.json"
    before = desc.read_bytes()
    with pytest.raises(DiskImageError, match="not 2147483648"):
        init_vm(_explicit(bundle, tmp_path / "vms", disk_size_gb=2))
    disk = tmp_path / "vms" / "dev1.img"
    assert desc.read_bytes() == before and disk.stat().st_size == GIB
    # What the guest wrote, at the start and in the last block, survives growing with --force.
    head, tail = os.urandom(4096), os.urandom(4096)
    with open(disk, "r+b") as f:
        f.write(head)
        f.seek(GIB - len(tail))
        f.write(tail)
    res = init_vm(_explicit(bundle, tmp_path / "vms", disk_size_gb=2, force=True))
    assert res.status is InitStatus.updated
    assert disk.stat().st_size == 2 * GIB
    with open(disk, "rb") as f:
        assert f.read(4096) == head
        f.seek(GIB - len(tail))
        assert f.read(len(tail)) == tail
        assert f.read(1 << 20) == bytes(1 << 20)  # the new space reads as zeros
    assert json.loads(desc.read_text())["disk"]["size_bytes"] == 2 * GIB


def test_descriptor_whose_artifacts_changed_is_an_error(tmp_path: Path) -> None:
    bundle = tmp_path / "b"
    make_bundle(bundle, KernelProfile.container)
    init_vm(_explicit(bundle, tmp_path / "vms", disk_size_gb=1))
    desc = tmp_path / "vms" / "dev1.linux.json"
    make_bundle(bundle, KernelProfile.container)  # rebuilt in place: new bytes, new checksums
    with pytest.raises(ChecksumMismatchError, match="vmlinux"):
        verify_descriptor(desc)
    with pytest.raises(ChecksumMismatchError):
        init_vm(_explicit(bundle, tmp_path / "vms"))
    res = init_vm(_explicit(bundle, tmp_path / "vms", force=True))
    assert res.descriptor["sha256_kernel"] == sha256_file(bundle / "vmlinux")
    verify_descriptor(desc)


def test_artifacts_not_matching_their_version_json_are_refused(tmp_path: Path) -> None:
    bundle = tmp_path / "b"
    make_bundle(bundle, KernelProfile.container)
    with open(bundle / "initramfs.img", "r+b") as f:
        f.write(b"X")
    with pytest.raises(ChecksumMismatchError, match=r"initramfs\.img"):
        init_vm(_explicit(bundle, tmp_path / "vms"))
    assert not (tmp_path / "vms").exists()


def test_partial_explicit_artifacts_and_bad_names(tmp_path: Path) -> None:
    with pytest.raises(InvalidConfigError, match="go together"):
        init_vm(InitRequest(name="x", output_dir=tmp_path, kernel=tmp_path / "k"))
    with pytest.raises(InvalidConfigError, match="VM name"):
        init_vm(InitRequest(name="../evil", output_dir=tmp_path))


def test_installed_profile_is_validated_and_used(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bundle = tmp_path / "b"
    make_bundle(bundle, KernelProfile.container)
    monkeypatch.setenv("VZ_LINUX_CONTAINER_BUNDLE_DIR", str(bundle))
    res = init_vm(InitRequest(name="c1", profile=KernelProfile.container, disk_size_gb=1))
    assert res.descriptor_path == home / ".vz" / "vms" / "c1.linux.json"
    # The descriptor pins the installed copy, not the bundle it was installed from.
    assert Path(res.descriptor["kernel"]).is_relative_to((home / ".vz" / "linux").resolve())
    assert res.descriptor["sha256_kernel"] == sha256_file(bundle / "vmlinux")


def test_uninstalled_profile_says_how_to_install(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(MissingArtifactsError):
        init_vm(InitRequest(name="c1", profile=KernelProfile.container))
    with pytest.raises(SystemExit) as e:
        vz_main(["vm", "linux", "init", "--name", "c1", "--kernel-profile", "container"])
    assert e.value.code == 10  # docs/oci.md: missing/uninstalled profile
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert "container kernel profile is not installed" in err
    assert "vz-linux build --profile container && vz-linux install" in err
    assert "Traceback" not in err


def test_cli_create_rerun_mismatch_force(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bundle = tmp_path / "b"
    make_bundle(bundle, KernelProfile.developer)
    args = ["vm", "linux", "init", "--name", "v", "--output-dir", str(tmp_path / "vms"),
            "--kernel", str(bundle / "vmlinux"), "--initramfs", str(bundle / "initramfs.img"),
            "--version-json", str(bundle / "version.json")]
    for extra, code, word in ((["--disk-size-gb", "1"], 0, "created"), ([], 0, "compatible"),
                              (["--disk-size-gb", "3"], 54, "error"),  # docs/oci.md: disk image 54
                              (["--disk-size-gb", "3", "--force"], 0, "updated")):
        with pytest.raises(SystemExit) as e:
            vz_main(args + extra)
        out = capsys.readouterr()
        assert e.value.code == code, out
        assert word in (out.out + out.err)
    assert os.path.getsize(tmp_path / "vms" / "v.img") == 3 * GIB
