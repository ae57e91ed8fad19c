"""Registry references and the registry client's command lines, as data (no registry needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from vz_linux.arch import Architecture
from vz_linux.bundle.artifact import select_platform
from vz_linux.bundle.registry import Reference, RegistryClient, classify
from vz_linux.errors import (
    BlobDigestError,
    InvalidConfigError,
    ReferenceNotFoundError,
    RegistryAuthError,
    RegistryError,
)

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
