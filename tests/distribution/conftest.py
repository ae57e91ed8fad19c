"""Fixtures for the distribution tests: signing keys, small real bundles and their signed releases,
the real `vz-linux` console script on a fresh $HOME, and a real registry (tests/local_registry.py)."""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from vz_linux.bundle.release import make_release
from vz_linux.bundle.signing import generate_key
from vz_linux.profiles import KernelProfile

from ..foundation.bundles import make_bundle
from .servers import LocalRegistry, local_registry

REPO = Path(__file__).resolve().parents[2]
VZ_LINUX = REPO / ".venv" / "bin" / "vz-linux"
# Variables of the caller that would make a subprocess see another machine's state.
_SCRUB = ("REGISTRY_AUTH_FILE", "XDG_RUNTIME_DIR", "XDG_CACHE_HOME", "XDG_CONFIG_HOME", "DOCKER_CONFIG")


def dist_env(home: Path, **extra: str) -> dict[str, str]:
    """A subprocess environment on a fresh $HOME: no VZ_LINUX_* (so the download cache is
    ``$HOME/.cache/vz-linux``), no registry credentials but those given."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VZ_LINUX_") and k not in _SCRUB}
    env["HOME"] = str(home)
    env.update(extra)
    return env


def vz(home: Path, *args: str | Path, timeout: float = 300, **extra: str) -> subprocess.CompletedProcess[str]:
    home.mkdir(parents=True, exist_ok=True)
    return subprocess.run([str(VZ_LINUX), *map(str, args)], env=dist_env(home, **extra), capture_output=True,
                          text=True, timeout=timeout)


def assert_one_line_error(r: subprocess.CompletedProcess[str], code: int, *needles: str) -> str:
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("vz-linux: error: ") and "Traceback" not in r.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def tree_digest(root: Path) -> dict[str, str]:
    """Every file under ``root`` (hidden ones too) → sha256: what "nothing changed" compares."""
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@dataclass(frozen=True)
class Keys:
    private: Path
    public: Path


@pytest.fixture(scope="session")
def signing_key(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    d = tmp_path_factory.mktemp("key")
    return Keys(d / "release-key", generate_key(d / "release-key"))


@pytest.fixture(scope="session")
def other_key(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    d = tmp_path_factory.mktemp("other-key")
    return Keys(d / "other-key", generate_key(d / "other-key"))


@dataclass(frozen=True)
class FakeRelease:
    """A signed release of two small real bundles (random artifacts, valid metadata)."""

    version: str
    dir: Path
    bundles: dict[KernelProfile, Path]


def fake_release(root: Path, version: str, key: Path | None,
                 profiles: tuple[KernelProfile, ...] = (KernelProfile.developer, KernelProfile.container),
                 sizes: dict[str, int] | None = None) -> FakeRelease:
    bundles = {}
    for p in profiles:
        make_bundle(root / "bundles" / p.value, p, sizes=sizes)
        bundles[p] = root / "bundles" / p.value
    make_release(list(bundles.values()), version, root / "release", signing_key=key)
    return FakeRelease(version, root / "release", bundles)


@pytest.fixture(scope="module")
def release_v1(tmp_path_factory: pytest.TempPathFactory, signing_key: Keys) -> FakeRelease:
    return fake_release(tmp_path_factory.mktemp("v1"), "1.0.0", signing_key.private)


@pytest.fixture(scope="module")
def release_v2(tmp_path_factory: pytest.TempPathFactory, signing_key: Keys) -> FakeRelease:
    return fake_release(tmp_path_factory.mktemp("v2"), "2.0.0", signing_key.private)


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRegistry]:
    with local_registry(tmp_path_factory.mktemp("registry")) as reg:
        yield reg
