"""Registry references, the registry client's command lines and the artifact format, as data (no
registry needed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vz_linux.arch import Architecture
from vz_linux.bundle.artifact import canonical, digest_of, extract_bundle, select_platform, write_layout
from vz_linux.bundle.model import load_bundle, validate_bundle
from vz_linux.bundle.registry import Reference, RegistryClient, classify
from vz_linux.errors import (
    BlobDigestError,
    InvalidConfigError,
    ReferenceNotFoundError,
    RegistryAuthError,
    RegistryError,
)
from vz_linux.hashing import sha256_file
from vz_linux.profiles import KernelProfile

from ..foundation.bundles import make_bundle

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize("text, want", [
    ("127.0.0.1:5000/vz/container:1.0", ("127.0.0.1:5000", "vz/container", "1.0", None)),
    (f"registry.example.com/a/b/c@{DIGEST}", ("registry.example.com", "a/b/c", None, DIGEST)),
    (f"localhost/vz:tag@{DIGEST}", ("localhost", "vz", "tag", DIGEST)),
    ("[::1]:5000/vz/k", ("[::1]:5000", "vz/k", None, None)),
    ("myregistry:5000/vz", ("myregistry:5000", "vz", None, None)),
])
def test_reference_parses(text: str, want: tuple[str, str, str | None, str | None]) -> None:
    ref = Reference.parse(text)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == want
    assert str(ref) == text


@pytest.mark.parametrize("text", ["vz/container:1", "container", "127.0.0.1:5000/Upper/case",
                                  "host.example/vz@sha256:short", "host.example/vz:bad tag", ""])
def test_bad_references_are_refused(text: str) -> None:
    with pytest.raises(InvalidConfigError) as e:
        Reference.parse(text)
    assert e.value.exit_code == 18


@pytest.mark.parametrize("host, loopback", [("127.0.0.1:5000", True), ("127.9.9.9", True), ("localhost:80", True),
                                            ("[::1]:5000", True), ("10.0.0.1:5000", False),
                                            ("registry.example.com", False), ("localhost.example.com", False)])
def test_plain_http_only_for_loopback_unless_asked(host: str, loopback: bool) -> None:
    ref = Reference.parse(f"{host}/vz/container:1")
    assert ref.is_loopback is loopback
    argv = RegistryClient().inspect_argv(ref)
    assert f"--tls-verify={'false' if loopback else 'true'}" in argv
    assert "--tls-verify=false" in RegistryClient(plain_http=True).inspect_argv(ref)


def test_a_digest_pin_wins_over_the_tag() -> None:
    ref = Reference.parse(f"registry.example.com/vz/container:1.0@{DIGEST}")
    assert ref.transport() == f"docker://registry.example.com/vz/container@{DIGEST}"
    assert Reference.parse("registry.example.com/vz/container").with_default_tag().tag == "latest"


def test_credentials_come_from_registry_auth_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    ref = Reference.parse("registry.example.com/vz/container:1")
    monkeypatch.delenv("REGISTRY_AUTH_FILE", raising=False)
    assert "--authfile" not in RegistryClient().pull_argv(ref, tmp_path)  # skopeo's own defaults
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(tmp_path / "auth.json"))
    argv = RegistryClient().push_argv(tmp_path, "1", ref, tmp_path / "d")
    assert argv[argv.index("--authfile") + 1] == str(tmp_path / "auth.json")
    assert "--dest-tls-verify=true" in argv and argv[-1] == "docker://registry.example.com/vz/container:1"


@pytest.mark.parametrize("stderr, cls", [
    (b'level=fatal msg="reading manifest 1 in h/r: unauthorized: authentication required"', RegistryAuthError),
    (b'level=fatal msg="reading manifest 9 in h/r: manifest unknown: manifest unknown"', ReferenceNotFoundError),
    (b'level=fatal msg="writing blob: happened during read: Digest did not match, expected sha256:1"',
     BlobDigestError),
    (b'level=fatal msg="pinging container registry h: connection refused"', RegistryError),
])
def test_skopeo_failures_map_to_typed_errors(stderr: bytes, cls: type[RegistryError]) -> None:
    err = classify(stderr, "pulling h/r:1")
    assert type(err) is cls and str(err).startswith("pulling h/r:1: ") and "level=fatal" not in str(err)


def test_platform_selection() -> None:
    index = {"manifests": [{"digest": DIGEST, "platform": {"os": "linux", "architecture": "arm64"}}]}
    assert select_platform(index, Architecture.arm64, "r") == DIGEST
    with pytest.raises(ReferenceNotFoundError, match=r"linux/amd64.*it has: linux/arm64"):
        select_platform(index, Architecture.x86_64, "r")


# --- the artifact format, round-tripped through an OCI layout on disk ----------------------------------
def _layout(tmp_path: Path) -> tuple[Path, str, Path]:
    make_bundle(tmp_path / "b", KernelProfile.container)
    written = write_layout([load_bundle(tmp_path / "b")], tmp_path / "layout", "t")
    return tmp_path / "layout", written.manifests[Architecture.host()], tmp_path / "b"


def test_layout_round_trip_gives_back_the_bundle(tmp_path: Path) -> None:
    root, digest, bundle = _layout(tmp_path)
    (tmp_path / "out").mkdir()
    extract_bundle(root, digest, tmp_path / "out", "r")
    for name in ("vmlinux", "initramfs.img", "crun", "version.json"):
        assert (tmp_path / "out" / name).read_bytes() == (bundle / name).read_bytes()
    assert (tmp_path / "out" / "crun").stat().st_mode & 0o111
    validate_bundle(tmp_path / "out")
    # Canonical JSON: the same bundle gives the same manifest digest.
    again = write_layout([load_bundle(bundle)], tmp_path / "layout2", "t")
    assert again.manifests[Architecture.host()] == digest


def test_tampered_blob_and_foreign_artifacts_are_refused(tmp_path: Path) -> None:
    root, digest, bundle = _layout(tmp_path)
    blob = root / "blobs" / "sha256" / sha256_file(bundle / "initramfs.img")
    data = bytearray(blob.read_bytes())
    data[10] ^= 0xFF
    blob.unlink()  # a link to the bundle's file: replace, do not write through
    blob.write_bytes(bytes(data))
    (tmp_path / "out").mkdir()
    with pytest.raises(BlobDigestError):
        extract_bundle(root, digest, tmp_path / "out", "r")
    manifest_path = root / "blobs" / "sha256" / digest.split(":")[1]
    doc = json.loads(manifest_path.read_bytes())
    doc["artifactType"] = "application/vnd.example.other+json"
    raw = canonical(doc)
    (root / "blobs" / "sha256" / digest_of(raw).split(":")[1]).write_bytes(raw)
    (tmp_path / "out2").mkdir()
    with pytest.raises(RegistryError, match="not a vz-linux bundle") as e:
        extract_bundle(root, digest_of(raw), tmp_path / "out2", "r")
    assert type(e.value) is RegistryError and e.value.exit_code == 66
