"""assemble_bundle: a complete bundle from the real agent, BusyBox and crun (any file stands in for
the kernel image: the kernel is tested elsewhere), accepted by validate_bundle, written atomically."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from vz_linux import layout
from vz_linux.arch import Architecture
from vz_linux.build.assemble import assemble_bundle
from vz_linux.build.crun import OciRuntime
from vz_linux.build.kbuild import toolchain_info
from vz_linux.build.kernel import KernelInfo
from vz_linux.bundle.metadata import BundleMetadata, KernelSourceInfo
from vz_linux.bundle.model import validate_bundle
from vz_linux.errors import BuildError, ChecksumMismatchError
from vz_linux.hashing import sha256_file, sha256_text
from vz_linux.profiles import KernelProfile
from vz_linux.version import AGENT_PROTOCOL_REVISION, AGENT_VERSION

from .userland_fixtures import cpio_listing

pytestmark = pytest.mark.slow

SEED_FIELDS = ("kernel", "profile", "security_profile", "busybox", "agent", "agent_protocol_revision", "built",
               "sha256_vmlinux", "sha256_initramfs", "capabilities")
NEW_FIELDS = ("schema_version", "arch", "oci_runtime", "files", "kernel_config_sha256", "kernel_cache_key",
              "kernel_source", "toolchain")


def kernel_info(profile: KernelProfile, arch: Architecture, image: Path) -> KernelInfo:
    config = f"# stand-in .config for {profile.value}\nCONFIG_LOCALVERSION=\"{profile.local_version}\"\n"
    return KernelInfo(
        version="6.1.158", release=f"6.1.158{profile.local_version}", config_text=config,
        config_sha256=sha256_text(config), cache_key="k" * 16,
        source=KernelSourceInfo(kind="debian-package", version="6.1.158", sha256="a" * 64,
                                origin="linux-source-6.1 6.1.158-1"),
        toolchain=toolchain_info(arch), capabilities=profile.contract, image_path=image,
    )


@pytest.fixture
def image(tmp_path: Path) -> Path:
    p = tmp_path / "fake-vmlinux"
    p.write_bytes(b"\x7fELF stand-in kernel " * 1000)
    return p


@pytest.mark.parametrize("arch", [Architecture.x86_64, Architecture.arm64], ids=str)
def test_assembled_bundle_validates(arch: Architecture, image: Path, tmp_path: Path,
                                    cruns: dict[Architecture, OciRuntime]) -> None:
    profile = KernelProfile.container
    out = tmp_path / "out" / "container"
    meta = assemble_bundle(out_dir=out, profile=profile, arch=arch, kernel_image=image,
                           kernel=kernel_info(profile, arch, image))
    assert sorted(p.name for p in out.iterdir()) == sorted(layout.BUNDLE_FILES)
    bundle = validate_bundle(out, profile=profile, required_capabilities=profile.contract)
    assert bundle.metadata == meta
    raw = json.loads((out / layout.METADATA).read_text())
    for field in SEED_FIELDS + NEW_FIELDS:
        assert raw.get(field) not in (None, "", [], {}), field
    assert raw["arch"] == arch.value and raw["profile"] == "container"
    assert raw["agent"] == AGENT_VERSION and raw["agent_protocol_revision"] == AGENT_PROTOCOL_REVISION
    assert raw["kernel_release"] == "6.1.158-vz-container"
    assert raw["capabilities"] == sorted(c.value for c in profile.contract)
    assert raw["oci_runtime"]["name"] == "crun" and raw["oci_runtime"]["version"] == cruns[arch].version
    assert raw["busybox"].startswith("1.35.0 (Debian ")
    for name in layout.ARTIFACTS:
        assert raw["files"][name] == {"sha256": sha256_file(out / name), "size": (out / name).stat().st_size}
    assert (out / "vmlinux").read_bytes() == image.read_bytes()
    assert (out / "crun").read_bytes() == cruns[arch].path.read_bytes()
    assert os.access(out / "crun", os.X_OK)
    assert "sbin/vz-agent" in cpio_listing(out / layout.INITRAMFS).split()
    BundleMetadata.read(out / layout.METADATA)  # round-trips through the model


def test_rebuild_replaces_bundle_and_failure_keeps_old(image: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    arch, profile = Architecture.host(), KernelProfile.developer
    out = tmp_path / "out"
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    first = assemble_bundle(out_dir=out, profile=profile, arch=arch, kernel_image=image,
                            kernel=kernel_info(profile, arch, image))
    assert first.built == "2023-11-14T22:13:20Z"
    (out / "stray").write_text("from an older build")
    image.write_bytes(b"a different kernel")
    second = assemble_bundle(out_dir=out, profile=profile, arch=arch, kernel_image=image,
                             kernel=kernel_info(profile, arch, image))
    assert second.sha256_vmlinux != first.sha256_vmlinux
    assert not (out / "stray").exists()  # the whole directory was replaced, not patched
    validate_bundle(out, profile=profile)

    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(BuildError, match="does not exist"):
        assemble_bundle(out_dir=out, profile=profile, arch=arch, kernel_image=tmp_path / "missing",
                        kernel=kernel_info(profile, arch, image))
    # A failure after staging began (a kernel image that cannot be read): old bundle intact, no leftovers.
    with pytest.raises(BuildError, match="cannot copy"):
        assemble_bundle(out_dir=out, profile=profile, arch=arch, kernel_image=Path("/proc/self/mem"),
                        kernel=kernel_info(profile, arch, image))
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(".")] == []
    validate_bundle(out, profile=profile)


def test_tampered_bundle_is_refused(image: Path, tmp_path: Path) -> None:
    arch, profile = Architecture.host(), KernelProfile.container
    out = tmp_path / "b"
    assemble_bundle(out_dir=out, profile=profile, arch=arch, kernel_image=image,
                    kernel=kernel_info(profile, arch, image))
    with open(out / "crun", "r+b") as f:
        f.seek(100)
        f.write(b"X")
    with pytest.raises(ChecksumMismatchError, match="crun"):
        validate_bundle(out, profile=profile)


def test_rebuilding_the_outer_bundle_keeps_nested_bundles(image: Path, tmp_path: Path) -> None:
    """linux/out/ (developer) holds linux/out/container/ and linux/out/arm64/: a developer rebuild
    must not drop them."""
    arch = Architecture.host()
    out = tmp_path / "out"
    dev, ctr = KernelProfile.developer, KernelProfile.container
    assemble_bundle(out_dir=out, profile=dev, arch=arch, kernel_image=image, kernel=kernel_info(dev, arch, image))
    assemble_bundle(out_dir=out / "container", profile=ctr, arch=arch, kernel_image=image,
                    kernel=kernel_info(ctr, arch, image))
    (out / "arm64" / "container").mkdir(parents=True)
    (out / "arm64" / "container" / "marker").write_text("nested")
    nested_before = (out / "container" / layout.METADATA).read_bytes()
    image.write_bytes(b"a newer developer kernel")
    assemble_bundle(out_dir=out, profile=dev, arch=arch, kernel_image=image, kernel=kernel_info(dev, arch, image))
    validate_bundle(out, profile=dev)
    validate_bundle(out / "container", profile=ctr)
    assert (out / "container" / layout.METADATA).read_bytes() == nested_before
    assert (out / "arm64" / "container" / "marker").read_text() == "nested"
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(".")] == []
