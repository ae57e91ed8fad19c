"""Bundle validation: one typed error per failure, each naming what is wrong."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vz_linux import layout
from vz_linux.bundle.model import load_bundle, validate_bundle
from vz_linux.errors import (
    AgentVersionMismatchError,
    ChecksumMismatchError,
    InvalidMetadataError,
    MissingArtifactsError,
    MissingCapabilitiesError,
    ProfileMismatchError,
    ProtocolRevisionMismatchError,
    ProtocolRevisionMissingError,
    UnsafeBundleError,
)
from vz_linux.hashing import sha256_file
from vz_linux.profiles import KernelCapability, KernelProfile
from vz_linux.version import AGENT_VERSION

from .bundles import flip_byte, make_bundle, make_seed_bundle


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    make_bundle(tmp_path / "b")
    return tmp_path / "b"


def test_valid_bundle(bundle: Path) -> None:
    b = validate_bundle(bundle, profile=KernelProfile.developer,
                        required_capabilities={KernelCapability.tun})
    assert b.profile is KernelProfile.developer
    assert b.capabilities == KernelProfile.developer.contract
    assert b.kernel == bundle / "vmlinux" and b.oci_runtime == bundle / "crun"
    assert b.paths.metadata == bundle / layout.METADATA


@pytest.mark.parametrize("name", list(layout.ARTIFACTS))
def test_one_byte_corruption_names_file_and_both_hashes(bundle: Path, name: str) -> None:
    expected = sha256_file(bundle / name)
    flip_byte(bundle / name)
    actual = sha256_file(bundle / name)
    load_bundle(bundle)  # loading does not hash
    with pytest.raises(ChecksumMismatchError) as e:
        validate_bundle(bundle)
    msg = e.value.one_line()
    assert f"{name}: expected sha256 {expected}, found {actual}" in msg
    others = set(layout.ARTIFACTS) - {name}
    assert not any(f"{o}:" in msg for o in others)


def test_all_corrupted_files_are_listed(bundle: Path) -> None:
    flip_byte(bundle / "vmlinux")
    flip_byte(bundle / "crun")
    with pytest.raises(ChecksumMismatchError, match=r"crun: expected .*; vmlinux: expected "):
        validate_bundle(bundle)


@pytest.mark.parametrize("name", [*layout.ARTIFACTS, layout.METADATA])
def test_missing_file(bundle: Path, name: str) -> None:
    (bundle / name).unlink()
    with pytest.raises(MissingArtifactsError, match=name.replace(".", r"\.")):
        validate_bundle(bundle)


def test_missing_dir(tmp_path: Path) -> None:
    with pytest.raises(MissingArtifactsError, match="does not exist"):
        validate_bundle(tmp_path / "nowhere")


def test_corrupt_metadata_is_its_own_error(bundle: Path) -> None:
    (bundle / layout.METADATA).write_text("{not json")
    with pytest.raises(InvalidMetadataError):
        validate_bundle(bundle)


def test_symlink_inside_bundle_refused(bundle: Path, tmp_path: Path) -> None:
    real = tmp_path / "elsewhere"
    (bundle / "initramfs.img").rename(real)
    (bundle / "initramfs.img").symlink_to(real)  # same content: only the link itself is wrong
    with pytest.raises(UnsafeBundleError, match=r"initramfs\.img is a symlink"):
        validate_bundle(bundle)


def test_symlinked_metadata_refused(bundle: Path, tmp_path: Path) -> None:
    (bundle / layout.METADATA).rename(tmp_path / "v.json")
    (bundle / layout.METADATA).symlink_to(tmp_path / "v.json")
    with pytest.raises(UnsafeBundleError, match="symlink"):
        load_bundle(bundle)


def test_fifo_and_directory_refused(bundle: Path) -> None:
    (bundle / "crun").unlink()
    os.mkfifo(bundle / "crun")
    with pytest.raises(UnsafeBundleError, match="FIFO"):
        validate_bundle(bundle)
    (bundle / "crun").unlink()
    (bundle / "crun").mkdir()
    with pytest.raises(UnsafeBundleError, match="directory"):
        validate_bundle(bundle)


def test_profile_mismatch(bundle: Path) -> None:
    with pytest.raises(ProfileMismatchError, match="developer bundle, not container"):
        validate_bundle(bundle, profile=KernelProfile.container)


def test_security_profile_must_match(tmp_path: Path) -> None:
    make_bundle(tmp_path / "b", security_profile="container-hardened")
    with pytest.raises(ProfileMismatchError, match="security_profile"):
        validate_bundle(tmp_path / "b")


def test_agent_version_mismatch_and_opt_out(tmp_path: Path) -> None:
    make_bundle(tmp_path / "b", agent="0.0.1-other")
    with pytest.raises(AgentVersionMismatchError, match=r"0\.0\.1-other"):
        validate_bundle(tmp_path / "b")
    assert validate_bundle(tmp_path / "b", require_exact_agent_version=False).metadata.agent == "0.0.1-other"


def test_protocol_revision_mismatch_and_opt_out(tmp_path: Path) -> None:
    make_bundle(tmp_path / "b", protocol=999)
    with pytest.raises(ProtocolRevisionMismatchError, match="999"):
        validate_bundle(tmp_path / "b")
    validate_bundle(tmp_path / "b", require_exact_agent_version=False)


def test_protocol_revision_missing_and_opt_out(tmp_path: Path) -> None:
    make_bundle(tmp_path / "b", protocol=None)
    with pytest.raises(ProtocolRevisionMissingError):
        validate_bundle(tmp_path / "b")
    validate_bundle(tmp_path / "b", require_exact_agent_version=False)


def test_missing_capabilities_all_listed(tmp_path: Path) -> None:
    contract = KernelProfile.developer.contract
    make_bundle(tmp_path / "b", capabilities=contract - {KernelCapability.tun, KernelCapability.io_uring})
    with pytest.raises(MissingCapabilitiesError) as e:
        validate_bundle(tmp_path / "b")  # the profile's contract alone
    assert "lacks capabilities: io_uring, tun " in e.value.one_line()


def test_caller_capabilities_beyond_contract(bundle: Path) -> None:
    with pytest.raises(MissingCapabilitiesError, match="lacks capabilities: container_sandbox, nfsd "):
        validate_bundle(bundle, required_capabilities={KernelCapability.nfsd, KernelCapability.container_sandbox,
                                                       KernelCapability.vsock})


def test_seed_bundle_with_youki(tmp_path: Path) -> None:
    make_seed_bundle(tmp_path / "s", agent=AGENT_VERSION)
    with pytest.raises(ProtocolRevisionMissingError):
        validate_bundle(tmp_path / "s")
    b = validate_bundle(tmp_path / "s", profile=KernelProfile.container, require_exact_agent_version=False)
    assert b.oci_runtime == tmp_path / "s" / "youki"
    flip_byte(tmp_path / "s" / "youki")
    with pytest.raises(ChecksumMismatchError, match="youki: expected"):
        validate_bundle(tmp_path / "s", require_exact_agent_version=False)


def test_extra_files_listed_in_metadata_are_checked(tmp_path: Path) -> None:
    from vz_linux.bundle.metadata import FileInfo

    root = tmp_path / "b"
    meta = make_bundle(root)
    (root / "vz-agent.debug").write_bytes(b"symbols")
    files = dict(meta.files or {}) | {"vz-agent.debug": FileInfo.of(root / "vz-agent.debug")}
    meta.model_copy(update={"files": files}).write(root / layout.METADATA)
    validate_bundle(root)
    (root / "vz-agent.debug").write_bytes(b"Symbols")
    with pytest.raises(ChecksumMismatchError, match=r"vz-agent\.debug"):
        validate_bundle(root)


# docs/selection.md, "Validation": one error for the *first* failing step, in this order:
# artifacts present (10) -> profile (16) -> agent version (11) -> protocol revision (12, 13)
# -> capabilities (15) -> checksums (14). Each case breaks two steps; the earlier one must win.
@pytest.mark.parametrize(
    ("broken", "expected"),
    [
        ({"missing": "crun", "agent": "9.9.9"}, MissingArtifactsError),
        ({"profile": KernelProfile.container, "agent": "9.9.9"}, ProfileMismatchError),
        ({"agent": "9.9.9", "capabilities": []}, AgentVersionMismatchError),
        ({"protocol": None, "capabilities": []}, ProtocolRevisionMissingError),
        ({"protocol": 7, "capabilities": []}, ProtocolRevisionMismatchError),
        ({"capabilities": [], "corrupt": "vmlinux"}, MissingCapabilitiesError),
    ],
    ids=["artifacts>agent", "profile>agent", "agent>capabilities", "protocol-missing>capabilities",
         "protocol>capabilities", "capabilities>checksums"],
)
def test_validation_order(tmp_path: Path, broken: dict[str, object], expected: type[Exception]) -> None:
    kw = {k: v for k, v in broken.items() if k in ("agent", "protocol", "capabilities")}
    make_bundle(tmp_path / "b", **kw)  # type: ignore[arg-type]
    if "missing" in broken:
        (tmp_path / "b" / str(broken["missing"])).unlink()
    if "corrupt" in broken:
        flip_byte(tmp_path / "b" / str(broken["corrupt"]))
    profile = broken.get("profile", KernelProfile.developer)
    with pytest.raises(expected) as info:
        validate_bundle(tmp_path / "b", profile=profile)  # type: ignore[arg-type]
    assert type(info.value) is expected
