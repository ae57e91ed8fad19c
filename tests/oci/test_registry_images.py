"""`vz oci pull|images|rmi` and registry IMAGEs against a real registry (Debian's docker-registry on
127.0.0.1 with htpasswd auth), holding a two-platform image the session pushed from layouts it built
with umoci. No VM: what needs a guest is in test_oci_vm.py."""

from __future__ import annotations

import concurrent.futures
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vz_linux.oci.image import unpack_layout
from vz_linux.oci.store import ImageStore

from .conftest import PushedImage

VZ = Path(sys.executable).parent / "vz"
BAD_REFERENCE, NOT_FOUND, AUTH, NOT_PRESENT, IN_USE = 56, 68, 67, 57, 58


def _env(home: Path, auth: Path | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("VZ_LINUX_", "VZ_OCI_", "REGISTRY_", "XDG_", "DOCKER_"))}
    env.update(HOME=str(home), VZ_OCI_DATA_DIR=str(home / "oci"))
    if auth is not None:
        env["REGISTRY_AUTH_FILE"] = str(auth)
    return env


def vz(home: Path, *args: str, auth: Path | None = None) -> subprocess.CompletedProcess[str]:
    home.mkdir(parents=True, exist_ok=True)
    r = subprocess.run([str(VZ), *args], env=_env(home, auth), capture_output=True, text=True, timeout=300)
    assert "Traceback" not in r.stderr, r.stderr
    return r


def one_line(r: subprocess.CompletedProcess[str], code: int, *needles: str) -> None:
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vz: error: "), r.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def _store(home: Path) -> ImageStore:
    return ImageStore(home / "oci" / "store")


def _platform_file(home: Path, digest: str, tmp: Path) -> str:
    """What /etc/platform says in the stored image ``digest`` (unpacked from the store with umoci)."""
    rootfs = unpack_layout(_store(home).root, digest.replace(":", "-"), tmp / "unpacked")
    return (rootfs.path / "etc" / "platform").read_text().strip()


def test_pull_by_tag_picks_the_platform_and_lists_it(pushed_image: PushedImage, tmp_path: Path) -> None:
    home = tmp_path / "home"
    r = vz(home, "oci", "pull", "--override-arch", "amd64", pushed_image.ref, auth=pushed_image.auth_file)
    assert r.returncode == 0, r.stderr
    assert pushed_image.digests["amd64"] in r.stdout
    r = vz(home, "oci", "pull", "-q", "--override-arch", "arm64", pushed_image.ref, auth=pushed_image.auth_file)
    assert r.returncode == 0 and r.stdout.strip() == pushed_image.digests["arm64"], r.stderr
    # Each platform's own content, not just its own digest.
    assert _platform_file(home, pushed_image.digests["arm64"], tmp_path) == "linux/arm64"
    assert _platform_file(home, pushed_image.digests["amd64"], tmp_path) == "linux/amd64"
    rows = json.loads(vz(home, "oci", "images", "--json").stdout)
    repo, tag = pushed_image.ref.rsplit(":", 1)
    assert sorted((r["repository"], r["tag"], r["platform"], r["digest"]) for r in rows) == [
        (repo, tag, "linux/amd64", pushed_image.digests["amd64"]),
        (repo, tag, "linux/arm64", pushed_image.digests["arm64"])]
    table = vz(home, "oci", "images").stdout
    assert pushed_image.digests["amd64"].removeprefix("sha256:")[:12] in table and "linux/arm64" in table


def test_pull_by_digest_shares_blobs_and_rmi_collects_them(pushed_image: PushedImage, tmp_path: Path) -> None:
    home = tmp_path / "home"
    repo = pushed_image.ref.rsplit(":", 1)[0]
    assert vz(home, "oci", "pull", "--override-arch", "amd64", pushed_image.ref,
              auth=pushed_image.auth_file).returncode == 0
    blobs = sorted(p.name for p in _store(home).blobs.iterdir())
    # By the index digest (the platform is picked from it) and by the manifest digest itself.
    for digest in (pushed_image.index_digest, pushed_image.digests["amd64"]):
        r = vz(home, "oci", "pull", "-q", "--override-arch", "amd64", f"docker://{repo}@{digest}",
               auth=pushed_image.auth_file)
        assert r.returncode == 0 and r.stdout.strip() == pushed_image.digests["amd64"], r.stderr
    assert sorted(p.name for p in _store(home).blobs.iterdir()) == blobs  # one copy of each blob
    (img,) = _store(home).images()
    assert set(img.refs) == {pushed_image.ref, f"{repo}@{pushed_image.index_digest}",
                             f"{repo}@{pushed_image.digests['amd64']}"}
    # Untag two names: the image stays; the last one deletes it and its blobs.
    for ref in (pushed_image.ref, f"{repo}@{pushed_image.index_digest}"):
        r = vz(home, "oci", "rmi", ref)
        assert r.returncode == 0 and f"Untagged: {ref}" in r.stdout and "Deleted" not in r.stdout, r.stderr
        assert len(list(_store(home).blobs.iterdir())) == len(blobs)
    r = vz(home, "oci", "rmi", f"{repo}@{pushed_image.digests['amd64']}")
    assert r.returncode == 0 and f"Deleted: {pushed_image.digests['amd64']}" in r.stdout, r.stderr
    assert list(_store(home).blobs.iterdir()) == [] and _store(home).images() == []
    assert json.loads((_store(home).root / "index.json").read_text())["manifests"] == []
    one_line(vz(home, "oci", "rmi", pushed_image.ref), 51, "no image")


def test_rmi_by_id_deletes_every_name(pushed_image: PushedImage, tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert vz(home, "oci", "pull", "--override-arch", "amd64", pushed_image.ref,
              auth=pushed_image.auth_file).returncode == 0
    short = pushed_image.digests["amd64"].removeprefix("sha256:")[:12]
    r = vz(home, "oci", "rmi", short)
    assert r.returncode == 0 and f"Deleted: {pushed_image.digests['amd64']}" in r.stdout, r.stderr
    assert json.loads(vz(home, "oci", "images", "--json").stdout) == []


def test_concurrent_pulls_of_one_image_all_succeed(pushed_image: PushedImage, tmp_path: Path) -> None:
    home = tmp_path / "home"
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: vz(home, "oci", "pull", "-q", "--override-arch", "amd64",
                                             pushed_image.ref, auth=pushed_image.auth_file), range(4)))
    for r in results:
        assert r.returncode == 0 and r.stdout.strip() == pushed_image.digests["amd64"], r.stderr
    (img,) = _store(home).images()
    assert img.refs == (pushed_image.ref,)
    assert not [p for p in _store(home).root.iterdir() if p.name.startswith(".pull-")]  # stages removed
    assert _platform_file(home, img.digest, tmp_path) == "linux/amd64"  # every blob there and intact


@pytest.mark.parametrize("image", ["Busybox", "127.0.0.1:5000/Library/busybox", "docker://busybox",
                                   "127.0.0.1:5000/library/busybox:bad tag", "host.example/repo@sha256:abc"])
def test_bad_reference_is_one_line(image: str, tmp_path: Path) -> None:
    for args in (("oci", "pull", image), ("oci", "run", "--kernel-profile", "container", image, "--", "true")):
        one_line(vz(tmp_path / "home", *args), BAD_REFERENCE, "is not a")
    assert not (tmp_path / "home" / "oci" / "containers").exists() or not any(
        (tmp_path / "home" / "oci" / "containers").iterdir())


def test_unknown_tag_and_repository(pushed_image: PushedImage, tmp_path: Path) -> None:
    repo = pushed_image.ref.rsplit(":", 1)[0]
    for ref in (f"{repo}:no-such-tag", f"{pushed_image.registry.host}/library/nothing:1"):
        one_line(vz(tmp_path / "home", "oci", "pull", "--override-arch", "amd64", ref, auth=pushed_image.auth_file),
                 NOT_FOUND, ref)
    one_line(vz(tmp_path / "home", "oci", "pull", "--override-arch", "s390x", pushed_image.ref,
                auth=pushed_image.auth_file), NOT_FOUND)
    assert _store(tmp_path / "home").images() == []


def test_wrong_or_missing_credentials(pushed_image: PushedImage, tmp_path: Path) -> None:
    wrong = pushed_image.registry.auth_file(tmp_path / "wrong.json", password="not-the-password")
    for auth in (wrong, None):
        one_line(vz(tmp_path / "home", "oci", "pull", "--override-arch", "amd64", pushed_image.ref, auth=auth),
                 AUTH, "unauthorized", "log in")
    # ~/.docker/config.json is read when no REGISTRY_AUTH_FILE is set.
    pushed_image.registry.auth_file(tmp_path / "home" / ".docker" / "config.json")
    r = vz(tmp_path / "home", "oci", "pull", "--override-arch", "amd64", pushed_image.ref)
    assert r.returncode == 0, r.stderr


def test_tls_verify_on_loopback_is_refused_by_a_plain_http_registry(pushed_image: PushedImage,
                                                                     tmp_path: Path) -> None:
    r = vz(tmp_path / "home", "oci", "pull", "--tls-verify", "--override-arch", "amd64", pushed_image.ref,
           auth=pushed_image.auth_file)
    assert r.returncode == 66 and "https" in r.stderr.lower() and len(r.stderr.strip().splitlines()) == 1


def test_pull_never_without_the_image(pushed_image: PushedImage, tmp_path: Path) -> None:
    home = tmp_path / "home"
    one_line(vz(home, "oci", "run", "--pull=never", "--kernel-profile", "container", pushed_image.ref, "--", "true"),
             NOT_PRESENT, pushed_image.ref, "--pull=never")
    one_line(vz(home, "oci", "create", "--pull=never", pushed_image.ref), NOT_PRESENT)
    assert not (home / "oci" / "containers").exists() or not any((home / "oci" / "containers").iterdir())


def test_damaged_catalogue_is_one_line(tmp_path: Path) -> None:
    home = tmp_path / "home"
    store = _store(home)
    store.root.mkdir(parents=True)
    for text in ('{"schema_version": 1, "images": [{"digest": "sha256:../../etc", "refs": []}]}', "[1, 2",
                 '{"schema_version": 99, "images": []}'):
        (store.root / "images.json").write_text(text)
        one_line(vz(home, "oci", "images"), 59)
