"""Nothing trusted from the current directory (docs/security.md, "Hostile inputs"): a
wheel-installed vz_linux never auto-installs a bundle from `$PWD/linux/out`, nor from a project it
happens to be installed inside; only a real source checkout, or a bundle named explicitly, is used.

The package is really built and installed by pip (no dependencies, no network) into a directory
put first on PYTHONPATH, and `vz-linux ensure` runs from it in a directory holding a valid bundle.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from vz_linux import layout
from vz_linux.profiles import KernelProfile

from .conftest import clean_env

ENSURE = "import sys; from vz_linux.cli.main import main; main(sys.argv[1:])"


def _ensure(site: Path, cwd: Path, home: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", ENSURE, "ensure", "--profile", "container"], cwd=cwd,
                          env=clean_env(home, PYTHONPATH=str(site), **env), capture_output=True, text=True,
                          timeout=300)


@pytest.mark.kernel
def test_a_wheel_install_never_takes_a_bundle_from_the_current_directory(tmp_path: Path, built_bundle: Any) -> None:
    bundle = built_bundle(KernelProfile.container)
    top = layout.source_checkout()  # the checkout of the package under test: what pip builds
    assert top is not None
    site = tmp_path / "site"  # on no project's path
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--no-index", "--target", str(site), str(top)], check=True, timeout=600)
    foreign = tmp_path / "someproject"  # has linux/ and a pyproject.toml, but is not vz-linux
    (foreign / "linux").mkdir(parents=True)
    (foreign / "pyproject.toml").write_text('[project]\nname = "someproject"\n')
    shutil.copytree(site, foreign / "site", symlinks=True)  # the same wheel, installed inside it
    plain = tmp_path / "plain"  # only what an unpacked tarball or a cloned repo might hold
    for i, (cwd, where) in enumerate(((plain, site), (foreign, foreign / "site"))):
        shutil.copytree(bundle, cwd / "linux" / "out" / "container")
        home = tmp_path / f"home{i}"
        home.mkdir()
        imported = subprocess.run([sys.executable, "-c", "import vz_linux; print(vz_linux.__file__)"], cwd=cwd,
                                  env=clean_env(home, PYTHONPATH=str(where)), capture_output=True, text=True)
        assert imported.stdout.startswith(str(where)), imported  # the wheel's copy, not the checkout's
        proc = _ensure(where, cwd, home)
        assert proc.returncode == 10, (cwd, proc.stdout, proc.stderr)  # MissingArtifactsError
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert not (home / ".vz").exists(), f"installed a bundle found in {cwd}"
    # Named explicitly, the same bundle is used.
    named = _ensure(site, plain, tmp_path / "home0",
                    VZ_LINUX_CONTAINER_BUNDLE_DIR=str(plain / "linux" / "out" / "container"))
    assert named.returncode == 0, named.stderr
    assert (tmp_path / "home0" / ".vz" / "linux" / "container" / "version.json").is_file()
