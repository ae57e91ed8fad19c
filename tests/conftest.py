"""Shared pytest configuration. Area-specific fixtures live in tests/<area>/conftest.py.

``built_bundle(profile, arch=host) -> Path`` builds a complete bundle once per session through
the kernel cache: on a machine whose cache holds the kernel nothing is recompiled; on a fresh
machine (CI) each (profile, arch) kernel is compiled once. ``built_kernel`` is the same without
the userland, for tests of the kernel stage alone.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from benchmarks.figures import Figures

from vz_linux.arch import Architecture
from vz_linux.build.pipeline import BuildOptions, BuildResult, build_bundle
from vz_linux.layout import cache_root
from vz_linux.profiles import KernelProfile

BundleFactory = Callable[..., Path]
KernelFactory = Callable[..., BuildResult]


def pytest_configure(config: pytest.Config) -> None:
    # Pin the build cache for the whole session: a test that points $HOME elsewhere must still find
    # the kernels already compiled (and subprocesses inherit the same cache).
    # (No $HOME at all: the tests that need the cache will say so.)
    with contextlib.suppress(Exception):
        os.environ.setdefault("VZ_LINUX_CACHE_DIR", str(cache_root()))


def _log_stage(label: str) -> Callable[[str], None]:
    def say(text: str) -> None:
        print(f"[built_bundle {label}] {text}", flush=True)

    return say


@pytest.fixture(scope="session")
def built_kernel(tmp_path_factory: pytest.TempPathFactory) -> KernelFactory:
    """Factory: (profile, arch) -> BuildResult with only the kernel written into a session dir."""
    done: dict[tuple[KernelProfile, Architecture], BuildResult] = {}
    root = tmp_path_factory.mktemp("kernels")

    def get(profile: KernelProfile, arch: Architecture | None = None) -> BuildResult:
        arch = arch or Architecture.host()
        if (profile, arch) not in done:
            options = BuildOptions(profile=profile, arch=arch, out_dir=root / f"{profile}-{arch}",
                                   kernel_only=True, on_stage=_log_stage(f"{profile}/{arch}"))
            done[profile, arch] = build_bundle(options)
        return done[profile, arch]

    return get


@pytest.fixture(scope="session")
def built_bundle(tmp_path_factory: pytest.TempPathFactory) -> BundleFactory:
    """Factory: (profile, arch=host) -> path of a complete bundle dir built this session."""
    done: dict[tuple[KernelProfile, Architecture], Path] = {}
    root = tmp_path_factory.mktemp("bundles")

    def get(profile: KernelProfile = KernelProfile.container, arch: Architecture | None = None) -> Path:
        arch = arch or Architecture.host()
        if (profile, arch) not in done:
            out = root / f"{profile}-{arch}"
            build_bundle(BuildOptions(profile=profile, arch=arch, out_dir=out,
                                      on_stage=_log_stage(f"{profile}/{arch}")))
            done[profile, arch] = out
        return done[profile, arch]

    return get


FIGURES_ENV = "VZ_LINUX_FIGURES_FILE"


@pytest.fixture
def metrics(request: pytest.FixtureRequest) -> Iterator[Figures]:
    """Named figures of one test (Firecracker's ``metrics`` fixture): ``metrics.put(name, value, unit)``.

    Each figure carries the machine it ran on and the test's id; at teardown they are appended as
    JSON lines to ``$VZ_LINUX_FIGURES_FILE`` (default ``bench-results/figures.jsonl`` in the
    checkout, which git ignores), so figures from different runs compare by name.
    """
    figures = Figures(dimensions={"test": request.node.nodeid}, echo=False)
    yield figures
    target = Path(os.environ.get(FIGURES_ENV) or Path(__file__).resolve().parents[1] / "bench-results" / "figures.jsonl")
    figures.write_jsonl(target)
