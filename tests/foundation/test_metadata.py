"""version.json model: round trip, seed format, bad input, published schema."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from vz_linux import layout
from vz_linux.arch import Architecture
from vz_linux.bundle.metadata import BundleMetadata, schema_text
from vz_linux.errors import InvalidMetadataError
from vz_linux.profiles import KernelCapability, KernelProfile

from .bundles import make_bundle, make_seed_bundle

SCHEMA_FILE = Path(__file__).resolve().parents[2] / "schemas" / "version.schema.json"


def _good(tmp_path: Path) -> dict[str, Any]:
    make_bundle(tmp_path / "b")
    data: dict[str, Any] = json.loads((tmp_path / "b" / layout.METADATA).read_text())
    return data


def test_write_read_round_trip_is_canonical(tmp_path: Path) -> None:
    meta = make_bundle(tmp_path / "b", capabilities=["tun", "vsock", "gpu_passthrough", "vsock"])
    path = tmp_path / "b" / layout.METADATA
    text = path.read_text()
    assert text.endswith("}\n")
    keys = list(json.loads(text))
    assert keys == sorted(keys)
    back = BundleMetadata.read(path)
    assert back == meta
    assert back.to_json() == text  # stable: writing what was read gives the same bytes
    assert back.capabilities == ["gpu_passthrough", "tun", "vsock"]  # sorted, deduplicated, unknown kept
    assert back.capability_set == {KernelCapability.tun, KernelCapability.vsock}
    assert back.unknown_capabilities == ["gpu_passthrough"]
    # atomic write leaves no temp files behind
    assert sorted(p.name for p in path.parent.iterdir() if p.name.startswith(".")) == []


def test_seed_format_still_reads(tmp_path: Path) -> None:
    make_seed_bundle(tmp_path / "s")
    meta = BundleMetadata.read(tmp_path / "s" / layout.METADATA)
    assert meta.is_seed_format and meta.schema_version == 1
    assert meta.oci_runtime.name == "youki" and meta.oci_runtime.version == "0.5.1"
    assert meta.arch is Architecture.arm64
    assert meta.agent_protocol_revision is None
    assert meta.profile is KernelProfile.container
    assert "dm_crypt" in meta.capabilities and meta.capability_set == KernelProfile.container.contract
    assert set(meta.artifact_checksums()) == {"vmlinux", "initramfs.img", "youki"}


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InvalidMetadataError, match="does not exist"):
        BundleMetadata.read(tmp_path / "nope" / layout.METADATA)


@pytest.mark.parametrize(
    ("text", "expect"),
    [
        ('{"schema_version": 2, "kernel": "6.1', "truncated"),
        ("", "truncated"),
        ("kernel=6.1\n", "not valid JSON"),
        ("[1, 2]", "JSON object"),
    ],
)
def test_not_json_or_truncated(tmp_path: Path, text: str, expect: str) -> None:
    p = tmp_path / layout.METADATA
    p.write_text(text)
    with pytest.raises(InvalidMetadataError, match=expect) as e:
        BundleMetadata.read(p)
    assert "\n" not in e.value.one_line()


def test_truncated_real_file(tmp_path: Path) -> None:
    make_bundle(tmp_path / "b")
    p = tmp_path / "b" / layout.METADATA
    p.write_text(p.read_text()[: len(p.read_text()) // 2])
    with pytest.raises(InvalidMetadataError, match="truncated"):
        BundleMetadata.read(p)


@pytest.mark.parametrize(
    ("field", "value", "expect"),
    [
        ("schema_version", "2", "schema_version"),
        ("agent_protocol_revision", "1", "agent_protocol_revision"),
        ("capabilities", "vsock", "capabilities"),
        ("capabilities", [1, 2], "capabilities.0"),
        ("sha256_vmlinux", 12345, "sha256_vmlinux"),
        ("sha256_vmlinux", "xyz", "sha256_vmlinux"),
        ("files", {"vmlinux": {"sha256": "0" * 64, "size": "big"}}, "files.vmlinux.size"),
        ("arch", "sparc", "arch"),
        ("built", "yesterday", "built"),
        ("kernel", None, "kernel"),
    ],
)
def test_wrong_field_types(tmp_path: Path, field: str, value: Any, expect: str) -> None:
    data = _good(tmp_path)
    data[field] = value
    with pytest.raises(InvalidMetadataError, match=expect):
        BundleMetadata.parse_text(json.dumps(data))


def test_unknown_profile_lists_valid_ones(tmp_path: Path) -> None:
    data = _good(tmp_path)
    data["profile"] = "gaming"
    with pytest.raises(InvalidMetadataError, match="'developer' or 'container'"):
        BundleMetadata.parse_text(json.dumps(data))


@pytest.mark.parametrize("field", ["files", "kernel_config_sha256", "kernel_cache_key", "kernel_source", "toolchain"])
def test_new_format_requires_new_fields(tmp_path: Path, field: str) -> None:
    data = _good(tmp_path)
    del data[field]
    with pytest.raises(InvalidMetadataError, match=f"requires {field}"):
        BundleMetadata.parse_text(json.dumps(data))


@pytest.mark.parametrize("name", ["../../etc/passwd", "..", "a/b", "version.json", ".vz-install.json"])
def test_hostile_file_names_refused(tmp_path: Path, name: str) -> None:
    data = _good(tmp_path)
    data["files"][name] = {"sha256": "0" * 64, "size": 1}
    with pytest.raises(InvalidMetadataError):
        BundleMetadata.parse_text(json.dumps(data))
    data = _good(tmp_path)
    data["oci_runtime"]["name"] = name
    with pytest.raises(InvalidMetadataError):
        BundleMetadata.parse_text(json.dumps(data))


def test_files_must_agree_with_top_level_checksums(tmp_path: Path) -> None:
    data = _good(tmp_path)
    data["files"]["initramfs.img"]["sha256"] = "f" * 64
    with pytest.raises(InvalidMetadataError, match="disagrees"):
        BundleMetadata.parse_text(json.dumps(data))


def test_schema_file_matches_model() -> None:
    assert SCHEMA_FILE.read_text() == schema_text(), "schema drifted: run scripts/gen-version-schema"


def test_written_file_validates_against_published_schema(tmp_path: Path) -> None:
    schema = json.loads(SCHEMA_FILE.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    data = _good(tmp_path)
    jsonschema.validate(data, schema)
    # ... and the schema is not vacuous: what the model refuses, the schema refuses too.
    for mutate in (
        lambda d: d.pop("files"),
        lambda d: d.update(profile="gaming"),
        lambda d: d.update(sha256_vmlinux="xyz"),
        lambda d: d.update(capabilities="vsock"),
    ):
        bad = json.loads(json.dumps(data))
        mutate(bad)
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)
