"""Hermetic builds (docs/reproducible.md, "Hermetic builds"): the Debian build root made by
mmdebstrap, entered with bubblewrap, builds the guest agent byte-identical to the host's build
(same Debian toolchain versions, another directory, no network, no host tools); the build root's
manifest enters the kernel cache key only inside the root."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from vz_linux import hashing
from vz_linux.arch import Architecture
from vz_linux.build import buildroot, crun, kernel_cache
from vz_linux.build.agent import agent_source_dir, build_agent
from vz_linux.build.kbuild import toolchain_info
from vz_linux.errors import BuildRootError
from vz_linux.hashing import sha256_file, sha256_text
from vz_linux.run import run
from vz_linux.version import AGENT_PROTOCOL_REVISION, AGENT_VERSION

# The packages whose versions decide the agent's bytes.
TOOLCHAIN = ("gcc-12", "binutils", "libc6-dev", "gcc-12-aarch64-linux-gnu", "binutils-aarch64-linux-gnu",
             "libc6-dev-arm64-cross")


@pytest.fixture(scope="module")
def root() -> buildroot.BuildRoot:
    """The default build root (made once per machine: ~1 GB, 40 s to 5 min with mmdebstrap)."""
    return buildroot.ensure_root(buildroot.default_spec(buildroot.pinned_kernel_packages()))


def _versions(manifest: str) -> dict[str, str]:
    rows = (line.split("\t") for line in manifest.splitlines())
    return {pkg.split(":")[0]: ver for pkg, ver in rows}


def test_manifest_records_exact_versions(root: buildroot.BuildRoot) -> None:
    manifest = root.manifest.read_text()
    versions = _versions(manifest)
    assert {"gcc-12", "make", "flex", "bison", "libelf-dev", "gcc-aarch64-linux-gnu", "python3"} <= set(versions)
    assert root.manifest_sha256 == sha256_text(manifest)
    assert buildroot.manifest_of(root.root) == manifest  # what dpkg in the root says, recorded


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_agent_built_in_the_root_equals_the_host_build(root: buildroot.BuildRoot, tmp_path: Path) -> None:
    host_versions = {p: v for p, v in _versions(buildroot.manifest_of(Path("/"))).items() if p in TOOLCHAIN}
    root_versions = {p: v for p, v in _versions(root.manifest.read_text()).items() if p in TOOLCHAIN}
    assert host_versions == root_versions, "the host's toolchain drifted from the build root's: rerun setup.sh"
    src = tmp_path / "elsewhere" / "agent-src"  # another directory than the host build's
    shutil.copytree(agent_source_dir(), src, ignore=shutil.ignore_patterns("build", "fuzz"))
    out = tmp_path / "out"
    script = ("set -e; ! command -v qemu-system-x86_64; ! command -v clang-14; "
              "test \"$(tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ')\" = lo; "
              f"for a in x86_64 arm64; do make -s -C {src} ARCH=$a O={out}/$a VERSION={AGENT_VERSION} "
              f"REVISION={AGENT_PROTOCOL_REVISION} CC_FOR_ARCH=$(test $a = arm64 && echo aarch64-linux-gnu-)gcc "
              "STRIP_FOR_ARCH=$(test $a = arm64 && echo aarch64-linux-gnu-)strip; done")
    run(buildroot.enter_argv(root, ["sh", "-c", script], binds=[tmp_path]), timeout=600)
    for arch in Architecture:
        assert sha256_file(out / arch.value / "vz-agent") == sha256_file(build_agent(arch)), arch


def test_hermetic_kernel_key_differs_host_key_unchanged() -> None:
    arch = Architecture.host()
    toolchain = toolchain_info(arch)

    env = {"SOURCE_DATE_EPOCH": "1"}

    def key(buildroot: str | None) -> str:
        return kernel_cache.cache_key(config_text="CONFIG_X=y\n", source_identity="s", toolchain=toolchain,
                                      schema="1", arch=arch, build_env=env, buildroot=buildroot)

    host = kernel_cache.cache_key(config_text="CONFIG_X=y\n", source_identity="s", toolchain=toolchain,
                                  schema="1", arch=arch, build_env=env)
    # The host key is the same dict as without hermetic builds: no "buildroot" entry at all.
    assert host == hashing.cache_key({"config_sha256": sha256_text("CONFIG_X=y\n"), "source": "s",
                                      "toolchain": toolchain.model_dump(), "schema": "1", "arch": arch.value,
                                      "build_env": env})
    assert key(None) == host
    assert len({host, key("a" * 64), key("b" * 64)}) == 3


def test_identity_env_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(buildroot.IDENTITY_ENV, "../not-a-hash")
    assert buildroot.current_identity() is None
    monkeypatch.setenv(buildroot.IDENTITY_ENV, "f" * 64)
    assert buildroot.current_identity() == "f" * 64
    with pytest.raises(BuildRootError) as e:
        buildroot.run_hermetic(["true"])  # no nesting
    assert e.value.exit_code == 24


def test_host_mirrors_come_from_deb822_sources(tmp_path: Path) -> None:
    (tmp_path / "a.sources").write_text(
        "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm bookworm-updates\nComponents: main\n\n"
        "Types: deb-src\nURIs: http://deb.debian.org/debian\nSuites: bookworm\nComponents: main\n\n"
        "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: trixie\nComponents: main\n")
    assert buildroot.host_mirrors(tmp_path) == ("deb http://deb.debian.org/debian bookworm main",
                                                "deb http://deb.debian.org/debian bookworm-updates main")
    with pytest.raises(BuildRootError):
        buildroot.host_mirrors(tmp_path / "none")


def test_crun_key_gains_the_root_only_inside_it(monkeypatch: pytest.MonkeyPatch) -> None:
    source = crun.CrunSource(tree=Path("/nonexistent"), version=crun.PINNED_VERSION, dsc_sha256="d" * 64)
    libs = crun.Libraries(None, {"libcap2": "1"})
    monkeypatch.delenv(buildroot.IDENTITY_ENV, raising=False)
    host = crun.cache_key(source, Architecture.x86_64, "gcc 12", libs)
    monkeypatch.setenv(buildroot.IDENTITY_ENV, "e" * 64)
    assert crun.cache_key(source, Architecture.x86_64, "gcc 12", libs) != host
