"""`vz-linux push` / `pull` and references in the selection API, against a real registry: Debian's
docker-registry on 127.0.0.1 with htpasswd basic auth (tests/local_registry.py). The pushed bundles are
the real container bundles of both arches (kernels from the cache)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from vz_linux import layout
from vz_linux.arch import Architecture
from vz_linux.bundle.artifact import (
    ARTIFACT_TYPE,
    CONFIG_MEDIA_TYPE,
    INDEX_MEDIA_TYPE,
    MANIFEST_MEDIA_TYPE,
    TITLE,
)
from vz_linux.bundle.metadata import BundleMetadata
from vz_linux.bundle.model import KernelBundle
from vz_linux.bundle.resolve import KernelBundleOptions, ensure_kernel_bundle
from vz_linux.hashing import sha256_bytes, sha256_file
from vz_linux.profiles import KernelProfile

from ..foundation.bundles import flip_byte, make_bundle
from .conftest import assert_one_line_error, tree_digest, vz
from .servers import LocalRegistry, local_registry

CONT = KernelProfile.container


@pytest.fixture(scope="module")
def real_bundles(built_bundle) -> dict[Architecture, Path]:  # type: ignore[no-untyped-def]
    return {a: Path(built_bundle(CONT, a)) for a in Architecture}


@pytest.fixture(scope="module")
def pushed(registry: LocalRegistry, real_bundles: dict[Architecture, Path],
           tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    home = tmp_path_factory.mktemp("pusher")
    auth = registry.auth_file(home / "auth.json")
    r = vz(home, "push", real_bundles[Architecture.x86_64], real_bundles[Architecture.arm64],
           f"{registry.host}/vz/container:1.0.0", "--json", REGISTRY_AUTH_FILE=str(auth))
    assert r.returncode == 0, r.stderr
    data: dict[str, object] = json.loads(r.stdout)
    return data


def _files(root: Path) -> dict[str, str]:
    return {n: sha256_file(root / n) for n in [*layout.ARTIFACTS, layout.METADATA]}


def test_push_stores_one_artifact_per_arch_under_one_index(registry: LocalRegistry, pushed: dict[str, object],
                                                           real_bundles: dict[Architecture, Path]) -> None:
    index_raw = registry.get("/v2/vz/container/manifests/1.0.0", accept=INDEX_MEDIA_TYPE)
    assert f"sha256:{sha256_bytes(index_raw)}" == pushed["index_digest"]
    index = json.loads(index_raw)
    assert index["mediaType"] == INDEX_MEDIA_TYPE
    platforms = {(m["platform"]["os"], m["platform"]["architecture"]): m["digest"] for m in index["manifests"]}
    assert set(platforms) == {("linux", "amd64"), ("linux", "arm64")}
    manifests = pushed["manifests"]
    assert isinstance(manifests, dict)
    for arch, oci in ((Architecture.x86_64, "amd64"), (Architecture.arm64, "arm64")):
        assert platforms["linux", oci] == manifests[arch.value]
        raw = registry.get(f"/v2/vz/container/manifests/{manifests[arch.value]}", accept=MANIFEST_MEDIA_TYPE)
        assert f"sha256:{sha256_bytes(raw)}" == manifests[arch.value]
        m = json.loads(raw)
        assert m["artifactType"] == ARTIFACT_TYPE and m["config"]["mediaType"] == CONFIG_MEDIA_TYPE
        bundle = real_bundles[arch]
        config = registry.get(f"/v2/vz/container/blobs/{m['config']['digest']}")
        assert config == (bundle / "version.json").read_bytes()  # version.json is the config blob
        layers = {layer["annotations"][TITLE]: layer["digest"] for layer in m["layers"]}
        assert layers == {n: f"sha256:{sha256_file(bundle / n)}" for n in layout.ARTIFACTS}


def test_pull_by_tag_and_by_digest_on_a_fresh_home(tmp_path: Path, registry: LocalRegistry,
                                                   pushed: dict[str, object],
                                                   real_bundles: dict[Architecture, Path]) -> None:
    home = tmp_path / "home"
    registry.auth_file(home / ".docker" / "config.json")  # the docker convention, no REGISTRY_AUTH_FILE
    r = vz(home, "pull", f"{registry.host}/vz/container:1.0.0", "--json")
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    root = Path(got["root"])
    assert root.is_relative_to(home / ".vz" / "linux" / "pulled") and got["from_store"] is False
    assert _files(root) == _files(real_bundles[Architecture.host()])
    assert got["index_digest"] == pushed["index_digest"]
    # By index digest, another arch: the index picks the platform.
    r = vz(home, "pull", f"{registry.host}/vz/container@{pushed['index_digest']}", "--arch", "arm64", "--json")
    assert r.returncode == 0, r.stderr
    arm = json.loads(r.stdout)
    assert arm["arch"] == "arm64" and _files(Path(arm["root"])) == _files(real_bundles[Architecture.arm64])
    # By manifest digest, already stored: no blob fetched; --install puts it in place.
    r = vz(home, "pull", got["reference"], "--install", "--json")
    assert r.returncode == 0, r.stderr
    again = json.loads(r.stdout)
    assert again["from_store"] is True and again["installed"] == str(home / ".vz" / "linux" / "container")
    assert _files(Path(again["installed"])) == _files(real_bundles[Architecture.host()])


@pytest.mark.vm
@pytest.mark.slow
def test_pulled_x86_64_bundle_verifies_with_boot(tmp_path: Path, registry: LocalRegistry,
                                                  pushed: dict[str, object]) -> None:
    home = tmp_path / "home"
    auth = registry.auth_file(tmp_path / "auth.json")
    r = vz(home, "pull", f"{registry.host}/vz/container:1.0.0", "--arch", "x86_64", "--json",
           REGISTRY_AUTH_FILE=str(auth))
    assert r.returncode == 0, r.stderr
    root = json.loads(r.stdout)["root"]
    r = vz(home, "verify", "--boot", root, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "pass" in r.stdout and "FAIL" not in r.stdout


def test_registry_errors_are_one_line_and_leave_nothing(tmp_path: Path, registry: LocalRegistry,
                                                        pushed: dict[str, object]) -> None:
    home = tmp_path / "home"
    good = str(registry.auth_file(tmp_path / "good.json"))
    bad = str(registry.auth_file(tmp_path / "bad.json", password="wrong"))
    ref = f"{registry.host}/vz/container:1.0.0"
    assert_one_line_error(vz(home, "pull", ref, REGISTRY_AUTH_FILE=bad), 67, "unauthorized")
    assert_one_line_error(vz(home, "pull", ref), 67)  # no credentials at all
    assert_one_line_error(vz(home, "pull", f"{registry.host}/vz/container:9.9.9", REGISTRY_AUTH_FILE=good), 68,
                          "manifest unknown")
    assert_one_line_error(vz(home, "pull", f"{registry.host}/vz/nothing-here:1", REGISTRY_AUTH_FILE=good), 68)
    assert_one_line_error(vz(home, "pull", "127.0.0.1:1/vz/container:1.0.0", REGISTRY_AUTH_FILE=good), 66,
                          "connection refused")
    assert_one_line_error(vz(home, "pull", "no-host-given:1.0", REGISTRY_AUTH_FILE=good), 18)
    other = next(a for a in Architecture if a is not Architecture.host())
    manifests = pushed["manifests"]
    assert isinstance(manifests, dict)
    assert_one_line_error(vz(home, "pull", f"{registry.host}/vz/container@{manifests[other.value]}",
                             REGISTRY_AUTH_FILE=good), 68, f"holds the {other.value} bundle")
    assert_one_line_error(vz(home, "push", tmp_path, f"{registry.host}/vz/x@sha256:{'0' * 64}"), 18,
                          "cannot push to a digest")
    assert_one_line_error(vz(home, "push", tmp_path, f"{registry.host}/vz/x:1", REGISTRY_AUTH_FILE=good), 10)
    assert not list((home / ".vz" / "linux" / "pulled").glob("sha256/*"))
    assert not (home / ".vz" / "linux" / "container").exists()


def test_corrupted_blob_in_registry_storage_is_refused(tmp_path: Path, registry: LocalRegistry) -> None:
    home = tmp_path / "home"
    auth = str(registry.auth_file(tmp_path / "auth.json"))
    meta = make_bundle(tmp_path / "b", CONT)  # its own random blobs: the shared ones stay intact
    r = vz(home, "push", tmp_path / "b", f"{registry.host}/vz/corrupt:1", "--json", REGISTRY_AUTH_FILE=auth)
    assert r.returncode == 0, r.stderr
    flip_byte(registry.blob_data(f"sha256:{meta.sha256_vmlinux}"), offset=1000)
    r = vz(home, "pull", f"{registry.host}/vz/corrupt:1", "--install", REGISTRY_AUTH_FILE=auth)
    assert_one_line_error(r, 69, meta.sha256_vmlinux)
    assert tree_digest(home / ".vz") == {}


@pytest.fixture
def own_registry(tmp_path: Path) -> Iterator[LocalRegistry]:
    """A registry of the test's own, so it can be stopped half-way."""
    with local_registry(tmp_path / "registry") as reg:
        yield reg


def _push(home: Path, bundle: Path, ref: str, auth: Path) -> str:
    r = vz(home, "push", bundle, ref, "--json", REGISTRY_AUTH_FILE=str(auth))
    assert r.returncode == 0, r.stderr
    pinned: str = json.loads(r.stdout)["reference"]  # HOST/REPO@sha256:<index digest>
    return pinned


def test_ensure_with_a_reference_pulls_once_then_resolves_without_the_registry(
        tmp_path: Path, own_registry: LocalRegistry, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    auth = own_registry.auth_file(tmp_path / "auth.json")
    make_bundle(tmp_path / "v2", CONT)
    make_bundle(tmp_path / "v3", CONT)
    pin2 = _push(home, tmp_path / "v2", f"{own_registry.host}/vz/container:2", auth)
    pin3 = _push(home, tmp_path / "v3", f"{own_registry.host}/vz/container:3", auth)
    for name in [k for k in os.environ if k.startswith("VZ_LINUX_") and k != "VZ_LINUX_CACHE_DIR"]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(auth))
    monkeypatch.setattr(layout, "default_out_root", lambda: tmp_path / "no-checkout")

    def ensure(reference: str) -> KernelBundle:
        return ensure_kernel_bundle(KernelBundleOptions(profile=CONT, reference=reference))

    # Tag and digest: the digest wins; the first call pulls.
    first = ensure(f"{own_registry.host}/vz/container:2@" + pin2.split("@", 1)[1])
    assert first.root == home / ".vz" / "linux" / "container"
    assert (first.root / "vmlinux").read_bytes() == (tmp_path / "v2" / "vmlinux").read_bytes()
    assert (ensure(pin3).root / "vmlinux").read_bytes() == (tmp_path / "v3" / "vmlinux").read_bytes()
    # The registry goes away: stored digest pins need no round trip, and switching between them works.
    own_registry.stop()
    for pin, version in ((pin2, "v2"), (pin3, "v3"), (pin2, "v2")):
        got = ensure(pin)
        assert got.root == first.root
        assert (got.root / "vmlinux").read_bytes() == (tmp_path / version / "vmlinux").read_bytes()
    r = vz(home, "ensure", "--profile", "container", "--json", REGISTRY_AUTH_FILE=str(auth),
           VZ_LINUX_CONTAINER_REFERENCE=pin2)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["source_reason"] == "$VZ_LINUX_CONTAINER_REFERENCE"
    # A tag is resolved with the registry every time: without it, a clear error, the install kept.
    r = vz(home, "ensure", "--profile", "container", "--reference", f"{own_registry.host}/vz/container:2",
           REGISTRY_AUTH_FILE=str(auth))
    assert_one_line_error(r, 66, "connection refused")
    assert BundleMetadata.read(first.root / "version.json") == first.metadata
