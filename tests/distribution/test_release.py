"""`vz-linux keygen` and `vz-linux release`: the assets, their determinism, and signatures that the
standard tools check (sha256sum, ssh-keygen -Y verify) — not only our own code."""

from __future__ import annotations

import gzip
import json
import shutil
import stat
import subprocess
import tarfile
from datetime import datetime
from pathlib import Path

import pytest

from vz_linux import layout
from vz_linux.arch import Architecture
from vz_linux.bundle.metadata import BundleMetadata
from vz_linux.bundle.signing import NAMESPACE
from vz_linux.hashing import sha256_file
from vz_linux.profiles import KernelProfile

from ..foundation.bundles import make_bundle
from .conftest import REPO, Keys, assert_one_line_error, tree_digest, vz

ARCH = Architecture.host().value


def _bundles(root: Path) -> tuple[Path, Path]:
    make_bundle(root / "developer", KernelProfile.developer)
    make_bundle(root / "container", KernelProfile.container)
    return root / "developer", root / "container"


def _ssh_verify(key: Keys, file: Path, tmp: Path) -> subprocess.CompletedProcess[bytes]:
    """The check a user runs by hand (docs/distribution.md), with OpenSSH's tool."""
    allowed = tmp / "allowed_signers"
    allowed.write_text(f'vz-linux-release namespaces="{NAMESPACE}" ' + " ".join(key.public.read_text().split()[:2]))
    with open(file, "rb") as data:
        return subprocess.run(["ssh-keygen", "-Y", "verify", "-f", str(allowed), "-I", "vz-linux-release",
                               "-n", NAMESPACE, "-s", f"{file}.sig"], stdin=data, capture_output=True, timeout=60)


def test_release_twice_is_identical_and_standard_tools_check_it(tmp_path: Path, signing_key: Keys) -> None:
    dev, cont = _bundles(tmp_path / "b")
    for out in ("r1", "r2"):
        r = vz(tmp_path / "home", "release", dev, cont, "--version", "v1.2.0", "--out", tmp_path / out,
               "--signing-key", signing_key.private)
        assert r.returncode == 0, r.stderr
    first, second = tree_digest(tmp_path / "r1"), tree_digest(tmp_path / "r2")
    assert first == second  # byte-identical, signatures included (ed25519 signing is deterministic)
    tarballs = {f"vz-linux-developer-v1.2.0-{ARCH}.tar.gz", f"vz-linux-v1.2.0-{ARCH}.tar.gz",
                f"vz-linux-container-v1.2.0-{ARCH}.tar.gz"}
    assert set(first) == tarballs | {t + ".sha256" for t in tarballs} | {
        "SHA256SUMS", "SHA256SUMS.sig", "provenance.intoto.json", "provenance.intoto.json.sig"}
    out = tmp_path / "r1"
    # The legacy asset is the developer bundle under the seed's old name.
    assert first[f"vz-linux-v1.2.0-{ARCH}.tar.gz"] == first[f"vz-linux-developer-v1.2.0-{ARCH}.tar.gz"]
    sums = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=out, capture_output=True, text=True)
    assert sums.returncode == 0 and sums.stdout.count(": OK") == 3, sums.stdout + sums.stderr
    for t in sorted(tarballs):
        side = subprocess.run(["sha256sum", "-c", t + ".sha256"], cwd=out, capture_output=True, text=True)
        assert side.returncode == 0 and side.stdout == f"{t}: OK\n", side.stdout + side.stderr
    for signed in ("SHA256SUMS", "provenance.intoto.json"):
        ok = _ssh_verify(signing_key, out / signed, tmp_path)
        assert ok.returncode == 0 and b"Good" in ok.stderr + ok.stdout, ok.stderr
    # The check is not vacuous: one changed line and OpenSSH refuses it.
    tampered = tmp_path / "tampered"
    tampered.mkdir()
    shutil.copy(out / "SHA256SUMS.sig", tampered / "SHA256SUMS.sig")
    (tampered / "SHA256SUMS").write_text((out / "SHA256SUMS").read_text().replace("  vz-linux-v", "  vz-linux-X"))
    assert _ssh_verify(signing_key, tampered / "SHA256SUMS", tmp_path).returncode != 0


def test_tarball_is_flat_sorted_owned_by_root_and_timestamped_by_the_build(tmp_path: Path) -> None:
    meta = make_bundle(tmp_path / "c", KernelProfile.container)
    r = vz(tmp_path / "home", "release", tmp_path / "c", "--version", "3", "--out", tmp_path / "r")
    assert r.returncode == 0, r.stderr
    assert "not signed" in r.stderr  # a warning, not an error
    tarball = tmp_path / "r" / f"vz-linux-container-v3-{ARCH}.tar.gz"
    head = tarball.read_bytes()[:10]
    assert head[3] & 0x08 == 0 and head[4:8] == b"\0\0\0\0"  # gzip: no file name, header mtime 0
    built = int(datetime.fromisoformat(meta.built).timestamp())
    with tarfile.open(tarball) as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == sorted([*layout.ARTIFACTS, layout.METADATA])
        for m in members:
            assert m.isreg() and (m.uid, m.gid, m.uname, m.gname, m.mtime) == (0, 0, "root", "root", built)
            assert m.mode == (0o755 if m.name == "crun" else 0o644)
            data = tar.extractfile(m)
            assert data is not None and data.read() == (tmp_path / "c" / m.name).read_bytes()
    assert gzip.decompress(tarball.read_bytes())  # one well-formed gzip stream
    assert not any(p.name.endswith(".sig") for p in (tmp_path / "r").iterdir())


def test_provenance_names_the_assets_and_what_built_them(tmp_path: Path, signing_key: Keys) -> None:
    dev, cont = _bundles(tmp_path / "b")
    r = vz(tmp_path / "home", "release", dev, cont, "--version", "1.0", "--out", tmp_path / "r",
           "--signing-key", signing_key.private)
    assert r.returncode == 0, r.stderr
    doc = json.loads((tmp_path / "r" / "provenance.intoto.json").read_text())
    assert doc["_type"] == "https://in-toto.io/Statement/v1"
    assert doc["predicateType"] == "https://slsa.dev/provenance/v1"
    sums = dict(reversed(line.split("  ")) for line in (tmp_path / "r" / "SHA256SUMS").read_text().splitlines())
    assert {s["name"]: s["digest"]["sha256"] for s in doc["subject"]} == sums
    deps = doc["predicate"]["buildDefinition"]["resolvedDependencies"]
    for profile, bundle in ((KernelProfile.developer, dev), (KernelProfile.container, cont)):
        meta = BundleMetadata.read(bundle / "version.json")
        mine = [d for d in deps if d["annotations"]["bundle"] == f"{profile.value}/{ARCH}"]
        assert meta.kernel_source is not None and meta.kernel_source.sha256
        assert {"sha256": meta.kernel_source.sha256} in [d.get("digest") for d in mine]
        assert {"sha256": meta.kernel_config_sha256} in [d.get("digest") for d in mine]
        fragment = REPO / "linux" / profile.fragment_name
        assert {"name": f"linux/{profile.fragment_name}", "sha256": sha256_file(fragment)} in [
            {"name": d["name"], "sha256": d.get("digest", {}).get("sha256")} for d in mine]
        assert {d["name"] for d in mine} >= {"crun", "busybox-static"}
    assert doc["predicate"]["runDetails"]["builder"]["id"].startswith("pkg:pypi/vz-linux@")


def test_keygen_writes_a_private_and_a_public_key_and_never_overwrites(tmp_path: Path) -> None:
    r = vz(tmp_path / "home", "keygen", "--out", tmp_path / "k")
    assert r.returncode == 0, r.stderr
    assert stat.S_IMODE((tmp_path / "k").stat().st_mode) == 0o600
    assert (tmp_path / "k.pub").read_text().startswith("ssh-ed25519 ")
    assert "SHA256:" in r.stdout
    before = tree_digest(tmp_path)
    assert_one_line_error(vz(tmp_path / "home", "keygen", "--out", tmp_path / "k"), 60, "already exists")
    assert tree_digest(tmp_path) == before


def test_release_refusals(tmp_path: Path, signing_key: Keys) -> None:
    dev, cont = _bundles(tmp_path / "b")
    make_bundle(tmp_path / "b" / "container2", KernelProfile.container)
    home = tmp_path / "home"
    assert_one_line_error(vz(home, "release", cont, tmp_path / "b" / "container2", "--version", "1",
                             "--out", tmp_path / "r1"), 60, f"container/{ARCH}")
    assert not (tmp_path / "r1").exists()
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "keep").write_text("mine")
    assert_one_line_error(vz(home, "release", dev, "--version", "1", "--out", tmp_path / "used"), 60,
                          "not an empty directory")
    assert (tmp_path / "used" / "keep").read_text() == "mine" and len(list((tmp_path / "used").iterdir())) == 1
    assert_one_line_error(vz(home, "release", dev, "--version", "1/../2", "--out", tmp_path / "r2"), 18)
    assert_one_line_error(vz(home, "release", dev, "--version", "1", "--out", tmp_path / "r3",
                             "--signing-key", tmp_path / "nope"), 60, "does not exist")
    assert not (tmp_path / "r2").exists() and not (tmp_path / "r3").exists()


@pytest.mark.parametrize("version", ["1.0.0", "v1.0.0"])
def test_version_with_or_without_v_names_the_same_assets(tmp_path: Path, version: str) -> None:
    make_bundle(tmp_path / "c", KernelProfile.container)
    r = vz(tmp_path / "home", "release", tmp_path / "c", "--version", version, "--out", tmp_path / "r", "--json")
    assert r.returncode == 0, r.stderr
    assert list(json.loads(r.stdout)["assets"]) == [f"vz-linux-container-v1.0.0-{ARCH}.tar.gz"]
