"""The bundle's static crun: pinned Debian source, both arches static, and it really runs a container."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from vz_linux.arch import Architecture
from vz_linux.build.crun import PINNED_VERSION, OciRuntime, check_static, ensure_crun, fetch_source, patches
from vz_linux.errors import BuildError

pytestmark = pytest.mark.slow  # the first run on a machine builds crun twice (minutes)


def test_host_crun_reports_pinned_version(cruns: dict[Architecture, OciRuntime]) -> None:
    crun = cruns[Architecture.host()]
    out = subprocess.run([str(crun.path), "--version"], capture_output=True, text=True, check=True).stdout
    upstream = PINNED_VERSION.rsplit("-", 1)[0]
    assert f"crun version {upstream}\n" in out
    assert f"commit: {PINNED_VERSION}\n" in out
    assert "+SECCOMP" in out and "+CAP" in out and "+YAJL" in out
    names = [p.name for p in patches()]
    assert crun.patches == tuple(names)
    ours = f" + {', '.join(names)}" if names else ""
    assert crun.version == f"{upstream} (Debian {PINNED_VERSION}{ours})"


@pytest.mark.parametrize("arch", [Architecture.x86_64, Architecture.arm64], ids=str)
def test_crun_is_static_for_arch(arch: Architecture, cruns: dict[Architecture, OciRuntime]) -> None:
    desc = subprocess.run(["file", "-b", str(cruns[arch].path)], capture_output=True, text=True,
                          check=True).stdout
    assert "statically linked" in desc
    assert ("ARM aarch64" if arch is Architecture.arm64 else "x86-64") in desc
    assert "not stripped" not in desc
    assert check_static(cruns[arch].path, arch) == desc.strip()


def test_check_static_refuses_wrong_binaries(cruns: dict[Architecture, OciRuntime]) -> None:
    with pytest.raises(BuildError, match="not a static arm64 ELF"):
        check_static(cruns[Architecture.x86_64].path, Architecture.arm64)
    with pytest.raises(BuildError, match="not a static"):
        check_static(Path("/usr/bin/file"), Architecture.host())  # dynamically linked


def test_built_once_then_cached(cruns: dict[Architecture, OciRuntime]) -> None:
    first = cruns[Architecture.host()]
    before = first.path.stat().st_mtime_ns
    again = ensure_crun(Architecture.host())
    assert again.path == first.path and again.cache_key == first.cache_key
    assert again.path.stat().st_mtime_ns == before
    assert cruns[Architecture.arm64].cache_key != first.cache_key


def test_other_version_refused() -> None:
    with pytest.raises(BuildError, match="not the pinned version"):
        fetch_source("1.9-1")


def test_source_is_debians_pinned_package() -> None:
    src = fetch_source()
    changelog = (src.tree / "debian" / "changelog").read_text()
    assert changelog.startswith(f"crun ({PINNED_VERSION})")
    assert len(src.dsc_sha256) == 64


def test_crun_runs_a_container(cruns: dict[Architecture, OciRuntime], tmp_path: Path) -> None:
    crun = cruns[Architecture.host()].path
    bundle = tmp_path / "bundle"
    (bundle / "rootfs" / "bin").mkdir(parents=True)
    shutil.copy2("/bin/busybox", bundle / "rootfs" / "bin" / "busybox")
    os.symlink("busybox", bundle / "rootfs" / "bin" / "sh")
    subprocess.run([str(crun), "spec"], cwd=bundle, check=True)
    config = json.loads((bundle / "config.json").read_text())
    config["process"]["terminal"] = False
    config["process"]["args"] = ["/bin/sh", "-c", "echo in-container $(hostname) $$; exit 7"]
    (bundle / "config.json").write_text(json.dumps(config))
    # This host mixes cgroup v1 and v2, which crun refuses; give it a pure v2 view in a private
    # mount namespace and run without cgroup management.
    script = (f"mount --make-rprivate / && umount -l /sys/fs/cgroup && mount -t cgroup2 none /sys/fs/cgroup "
              f"&& exec {crun} --root {tmp_path / 'state'} --cgroup-manager=disabled run -b {bundle} t-{os.getpid()}")
    proc = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 7, proc.stderr
    assert proc.stdout.strip() == "in-container crun 1"  # own UTS and PID namespaces
