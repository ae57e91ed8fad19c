"""`vz-linux install --from URL_OR_DIR --version V` on a fresh $HOME, against a real HTTP server on
127.0.0.1 serving a signed release (small real bundles: random artifacts, valid metadata)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from vz_linux.arch import Architecture
from vz_linux.bundle.release import asset_name
from vz_linux.bundle.signing import sign_file
from vz_linux.profiles import KernelProfile

from ..foundation.bundles import flip_byte
from .conftest import FakeRelease, Keys, assert_one_line_error, fake_release, tree_digest, vz
from .servers import ReleaseServer

ARCH = Architecture.host()
DEV, CONT = KernelProfile.developer, KernelProfile.container


def install(home: Path, server_url: str, version: str, key: Keys | None, *extra: str,
            **env: str) -> tuple[int, str, str]:
    args = ["install", "--from", server_url, "--version", version, *extra]
    if key is not None:
        args += ["--trusted-key", str(key.public)]
    r = vz(home, *args, **env)
    return r.returncode, r.stdout, r.stderr


def linux(home: Path) -> Path:
    return home / ".vz" / "linux"


def test_profile_container_installs_only_the_container_profile(tmp_path: Path, release_v1: FakeRelease,
                                                               signing_key: Keys) -> None:
    home = tmp_path / "home"
    with ReleaseServer(release_v1.dir).running() as srv:
        code, _, err = install(home, srv.url, "1.0.0", signing_key, VZ_LINUX_PROFILE="container")
        assert code == 0, err
        fetched = srv.names()
    assert fetched == ["SHA256SUMS", "SHA256SUMS.sig", asset_name(CONT, "1.0.0", ARCH)]
    got = linux(home)
    assert (got / "container" / "version.json").read_bytes() == (release_v1.bundles[CONT] / "version.json").read_bytes()
    assert not (got / "developer").exists() and not (got / "version.json").exists()
    assert not [p for p in got.iterdir() if p.name.startswith(".release-")]  # no staging left behind


def test_all_installs_both_profiles_and_the_legacy_default(tmp_path: Path, release_v1: FakeRelease,
                                                           signing_key: Keys) -> None:
    home = tmp_path / "home"
    with ReleaseServer(release_v1.dir).running() as srv:
        code, out, err = install(home, srv.url, "v1.0.0", signing_key, "--json")
    assert code == 0, err
    result = json.loads(out)
    assert set(result["installed"]) == {"developer", "container"} and result["legacy"] == str(linux(home))
    for profile in (DEV, CONT):
        for name in ("vmlinux", "initramfs.img", "crun", "version.json"):
            assert (linux(home) / profile.value / name).read_bytes() == (release_v1.bundles[profile] / name).read_bytes()
    for name in ("vmlinux", "initramfs.img", "crun", "version.json"):  # the seed's legacy ~/.vz/linux/
        assert (linux(home) / name).read_bytes() == (release_v1.bundles[DEV] / name).read_bytes()
    assert (linux(home) / "crun").stat().st_mode & 0o111
    # The installs are what the selection API and `verify` accept, with no bundle offered.
    r = vz(home, "verify", linux(home))
    assert r.returncode == 0, r.stderr
    r = vz(home, "ensure", "--profile", "container", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["source"] is None, r.stderr


def test_profile_option_wins_over_the_environment(tmp_path: Path, release_v1: FakeRelease, signing_key: Keys) -> None:
    home = tmp_path / "home"
    with ReleaseServer(release_v1.dir).running() as srv:
        code, _, err = install(home, srv.url, "1.0.0", signing_key, "--profile", "developer",
                               VZ_LINUX_PROFILE="container")
    assert code == 0, err
    assert (linux(home) / "developer" / "version.json").is_file() and (linux(home) / "version.json").is_file()
    assert not (linux(home) / "container").exists()


def test_vz_no_linux_does_nothing(tmp_path: Path, release_v1: FakeRelease, signing_key: Keys) -> None:
    home = tmp_path / "home"
    with ReleaseServer(release_v1.dir).running() as srv:
        code, _, err = install(home, srv.url, "1.0.0", signing_key, VZ_NO_LINUX="1")
        assert srv.requests == []
    assert code == 0 and "VZ_NO_LINUX" in err
    assert not (home / ".vz").exists()


def test_release_without_container_installs_developer_and_warns(tmp_path: Path, signing_key: Keys) -> None:
    old = fake_release(tmp_path / "old", "0.9.0", signing_key.private, profiles=(DEV,))
    home = tmp_path / "home"
    with ReleaseServer(old.dir).running() as srv:
        code, _, err = install(home, srv.url, "0.9.0", signing_key)
        assert code == 0, err
        assert "warning" in err and "no container bundle" in err
        assert (linux(home) / "developer" / "version.json").is_file() and not (linux(home) / "container").exists()
        # Asked for explicitly, a missing container bundle is an error.
        code, _, err = install(tmp_path / "home2", srv.url, "0.9.0", signing_key, VZ_LINUX_PROFILE="container")
    assert code == 63 and "no container bundle" in err and not (tmp_path / "home2" / ".vz" / "linux" / "container").exists()


def test_local_directory_and_the_trusted_keys_directory(tmp_path: Path, release_v1: FakeRelease,
                                                        signing_key: Keys) -> None:
    home = tmp_path / "home"
    code, _, err = install(home, str(release_v1.dir), "1.0.0", None, "--profile", "container")
    assert code == 62 and "trusted-keys" in err  # no key given and none trusted yet
    (linux(home) / "trusted-keys").mkdir(parents=True)
    shutil.copy(signing_key.public, linux(home) / "trusted-keys" / "publisher.pub")
    code, _, err = install(home, str(release_v1.dir), "1.0.0", None, "--profile", "container")
    assert code == 0, err
    assert (linux(home) / "container" / "version.json").read_bytes() == (
        release_v1.bundles[CONT] / "version.json").read_bytes()


# --- refusals: nothing installed, the previous install intact ----------------------------------------
def _flip_tarball(rel: Path, key: Keys, other: Keys) -> dict[str, int]:
    flip_byte(rel / asset_name(CONT, "2.0.0", ARCH), offset=200)
    return {}


def _foreign_signature(rel: Path, key: Keys, other: Keys) -> dict[str, int]:
    # A valid signature by the trusted key, but over another file of the release.
    shutil.copy(rel / "provenance.intoto.json.sig", rel / "SHA256SUMS.sig")
    return {}


def _edited_sums(rel: Path, key: Keys, other: Keys) -> dict[str, int]:
    text = (rel / "SHA256SUMS").read_text()
    (rel / "SHA256SUMS").write_text(text.replace(text[:8], "00000000", 1))
    return {}


def _unsigned(rel: Path, key: Keys, other: Keys) -> dict[str, int]:
    (rel / "SHA256SUMS.sig").unlink()
    return {}


def _truncated(rel: Path, key: Keys, other: Keys) -> dict[str, int]:
    return {asset_name(CONT, "2.0.0", ARCH): 4096}


FAULTS: dict[str, tuple[Callable[[Path, Keys, Keys], dict[str, int]], int, str]] = {
    "flipped-byte": (_flip_tarball, 65, "differs from"),
    "foreign-signature": (_foreign_signature, 61, "not a valid signature"),
    "edited-sums": (_edited_sums, 61, "not a valid signature"),
    "unsigned": (_unsigned, 61, "not signed"),
    "truncated": (_truncated, 64, "cut short after 4096 of"),
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_refused_release_installs_nothing_and_keeps_the_previous_install(
        tmp_path: Path, release_v1: FakeRelease, release_v2: FakeRelease, signing_key: Keys, other_key: Keys,
        fault: str) -> None:
    home = tmp_path / "home"
    code, _, err = install(home, str(release_v1.dir), "1.0.0", signing_key)
    assert code == 0, err
    before = tree_digest(linux(home))
    rel = tmp_path / "v2"
    shutil.copytree(release_v2.dir, rel)
    breaker, exit_code, needle = FAULTS[fault]
    cut = breaker(rel, signing_key, other_key)
    with ReleaseServer(rel, cut_after=cut).running() as srv:
        r = vz(home, "install", "--from", srv.url, "--version", "2.0.0", "--trusted-key", signing_key.public)
    assert_one_line_error(r, exit_code, needle)
    assert tree_digest(linux(home)) == before


def test_release_signed_by_an_untrusted_key_is_refused(tmp_path: Path, signing_key: Keys, other_key: Keys,
                                                       release_v1: FakeRelease) -> None:
    home = tmp_path / "home"
    assert install(home, str(release_v1.dir), "1.0.0", signing_key)[0] == 0
    before = tree_digest(linux(home))
    stranger = fake_release(tmp_path / "s", "2.0.0", other_key.private)
    r = vz(home, "install", "--from", stranger.dir, "--version", "2.0.0", "--trusted-key", signing_key.public)
    assert_one_line_error(r, 62, "not trusted", str(signing_key.public))
    assert tree_digest(linux(home)) == before


def test_truncated_download_resumes_with_a_range_request(tmp_path: Path, release_v2: FakeRelease,
                                                         signing_key: Keys) -> None:
    home = tmp_path / "home"
    name = asset_name(CONT, "2.0.0", ARCH)
    with ReleaseServer(release_v2.dir, cut_after={name: 10_000}).running() as srv:
        code, _, err = install(home, srv.url, "2.0.0", signing_key, "--profile", "container")
        assert code == 64 and "run the same command again" in err
        parts = list((home / ".cache" / "vz-linux" / "downloads").glob("*.part"))
        assert [p.stat().st_size for p in parts] == [10_000]
        assert not (linux(home) / "container").exists()
        code, _, err = install(home, srv.url, "2.0.0", signing_key, "--profile", "container")
        assert code == 0, err
        ranges = [r.range for r in srv.requests if r.path == f"/{name}"]
    assert ranges == [None, "bytes=10000-"]
    assert (linux(home) / "container" / "vmlinux").read_bytes() == (release_v2.bundles[CONT] / "vmlinux").read_bytes()
    assert not list((home / ".cache" / "vz-linux" / "downloads").glob("*.part"))


def test_size_cap_and_missing_version(tmp_path: Path, signing_key: Keys) -> None:
    big = fake_release(tmp_path / "big", "1.0.0", signing_key.private, profiles=(CONT,),
                       sizes={"vmlinux": 3 << 20, "initramfs.img": 4096, "crun": 4096})
    home = tmp_path / "home"
    with ReleaseServer(big.dir).running() as srv:
        code, _, err = install(home, srv.url, "1.0.0", signing_key, "--profile", "container", "--max-size", "1")
        assert code == 64 and "byte cap" in err, err
        code, _, err = install(home, srv.url, "7.0.0", signing_key, "--profile", "container")
        assert code == 63 and "v7.0.0" in err, err
    assert not (linux(home) / "container").exists()
    assert not list((home / ".cache" / "vz-linux" / "downloads").glob("*.part"))


def test_seed_release_with_only_the_legacy_name_installs_developer(tmp_path: Path, signing_key: Keys) -> None:
    """A seed-era release: the developer bundle only as vz-linux-vV-ARCH.tar.gz, no container one."""
    rel = fake_release(tmp_path / "seed", "0.5.0", None, profiles=(DEV,)).dir
    (rel / asset_name(DEV, "0.5.0", ARCH)).unlink()
    sums = [line for line in (rel / "SHA256SUMS").read_text().splitlines() if "-developer-" not in line]
    (rel / "SHA256SUMS").write_text("\n".join(sums) + "\n")
    sign_file(signing_key.private, rel / "SHA256SUMS")
    home = tmp_path / "home"
    with ReleaseServer(rel).running() as srv:
        code, _, err = install(home, srv.url, "0.5.0", signing_key)
        assert code == 0, err
        assert asset_name(None, "0.5.0", ARCH) in srv.names()
    assert (linux(home) / "developer" / "vmlinux").is_file() and (linux(home) / "vmlinux").is_file()
    assert "no container bundle" in err
