"""The whole trip without a compile on the user's side: a signed release of the real container bundle,
served over HTTP on 127.0.0.1, installed on a fresh $HOME with `vz-linux install --from`, then booted
with `vz-linux run --profile container`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vz_linux.arch import Architecture
from vz_linux.bundle.metadata import BundleMetadata
from vz_linux.bundle.release import make_release
from vz_linux.profiles import KernelProfile

from .conftest import Keys, vz
from .servers import ReleaseServer

pytestmark = [pytest.mark.vm, pytest.mark.slow]


def test_install_from_a_served_release_then_run(tmp_path: Path, built_bundle, signing_key: Keys) -> None:  # type: ignore[no-untyped-def]
    bundle = Path(built_bundle(KernelProfile.container, Architecture.host()))
    make_release([bundle], "1.0.0", tmp_path / "release", signing_key=signing_key.private)
    home = tmp_path / "home"
    with ReleaseServer(tmp_path / "release").running() as srv:
        r = vz(home, "install", "--from", srv.url, "--version", "1.0.0", "--trusted-key", signing_key.public,
               "--json", VZ_LINUX_PROFILE="container")
    assert r.returncode == 0, r.stderr
    installed = Path(json.loads(r.stdout)["installed"]["container"]["root"])
    assert installed == home / ".vz" / "linux" / "container"
    r = vz(home, "run", "--profile", "container", "--", "uname", "-r", timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    release = BundleMetadata.read(bundle / "version.json").kernel_release
    assert r.stdout.strip() == release
    # It booted what the release installed (no other bundle was offered or built).
    r = vz(home, "ensure", "--profile", "container", "--json")
    assert json.loads(r.stdout)["source"] is None
    assert (installed / "version.json").read_bytes() == (bundle / "version.json").read_bytes()
