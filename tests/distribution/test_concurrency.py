"""Several processes installing the same release, or ensuring the same reference, at once: all
succeed and leave one whole install (real `vz-linux` processes, real HTTP server and registry)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from vz_linux.profiles import KernelProfile

from ..foundation.bundles import make_bundle
from .conftest import VZ_LINUX, FakeRelease, Keys, dist_env, tree_digest
from .servers import LocalRegistry, ReleaseServer

N = 3


def _all_at_once(home: Path, *args: str, **env: str) -> list[subprocess.CompletedProcess[str]]:
    procs = [subprocess.Popen([str(VZ_LINUX), *args], env=dist_env(home, **env), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(N)]
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=300)
        out.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
    return out


def test_concurrent_installers_all_succeed(tmp_path: Path, release_v1: FakeRelease, signing_key: Keys) -> None:
    home = tmp_path / "home"
    home.mkdir()
    with ReleaseServer(release_v1.dir).running() as srv:
        results = _all_at_once(home, "install", "--from", srv.url, "--version", "1.0.0",
                               "--trusted-key", str(signing_key.public))
    assert [r.returncode for r in results] == [0] * N, [r.stderr for r in results]
    linux = home / ".vz" / "linux"
    for p in (KernelProfile.developer, KernelProfile.container):
        installed = tree_digest(linux / p.value)
        assert installed.pop(".vz-install.json") and installed == tree_digest(release_v1.bundles[p])
    assert not [p for p in linux.iterdir() if p.name.startswith((".release-", ".developer.install-"))]


def test_concurrent_ensures_of_one_reference_all_succeed(tmp_path: Path, registry: LocalRegistry) -> None:
    home = tmp_path / "home"
    auth = str(registry.auth_file(tmp_path / "auth.json"))
    make_bundle(tmp_path / "b", KernelProfile.container)
    r = subprocess.run([str(VZ_LINUX), "push", str(tmp_path / "b"), f"{registry.host}/vz/concurrent:1", "--json"],
                       env=dist_env(home, REGISTRY_AUTH_FILE=auth), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    pinned = json.loads(r.stdout)["reference"]
    results = _all_at_once(home, "ensure", "--profile", "container", "--json", REGISTRY_AUTH_FILE=auth,
                           VZ_LINUX_CONTAINER_REFERENCE=pinned)
    assert [r.returncode for r in results] == [0] * N, [r.stderr for r in results]
    roots = {json.loads(r.stdout)["root"] for r in results}
    assert roots == {str(home / ".vz" / "linux" / "container")}
    assert (home / ".vz" / "linux" / "container" / "vmlinux").read_bytes() == (tmp_path / "b" / "vmlinux").read_bytes()
    assert len(list((home / ".vz" / "linux" / "pulled" / "sha256").iterdir())) == 1
