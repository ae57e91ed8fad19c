"""Shared helpers of the hostile-input tests (docs/security.md, "Hostile inputs"): the real `vz`
CLI in an isolated $HOME and data dir, crafted container records, processes by command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from vz_linux import layout
from vz_linux.oci.state import ContainerState, Status

from ..oci.conftest import make_busybox_rootfs, make_oci_layout

VZ = Path(sys.executable).parent / "vz"
CliRunner = Callable[..., subprocess.CompletedProcess[str]]


def clean_env(home: Path, **extra: str) -> dict[str, str]:
    """Our environment without VZ_* settings, $HOME in tmp, the machine's build cache kept."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VZ_LINUX_", "VZ_OCI_"))}
    env.update(HOME=str(home), VZ_LINUX_CACHE_DIR=str(layout.cache_root()), **extra)
    return env


@pytest.fixture(scope="session")
def oci_layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A BusyBox image layout built with the real umoci (read-only: tests alter copies)."""
    root = tmp_path_factory.mktemp("hostile-image")
    return make_oci_layout(root / "image", make_busybox_rootfs(root / "rootfs"))


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    d = tmp_path / "oci"
    (d / "containers").mkdir(parents=True)
    return d


@pytest.fixture
def vz(tmp_path: Path, data_dir: Path) -> CliRunner:
    """Run the installed `vz` console script against ``data_dir``; never a traceback."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env = clean_env(home, VZ_OCI_DATA_DIR=str(data_dir))

    def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([str(VZ), *args], env=env, capture_output=True, text=True, timeout=timeout)
        assert "Traceback" not in proc.stderr, proc.stderr
        return proc

    return run


def record(cid: str, **changes: Any) -> dict[str, Any]:
    """A well-formed state.json body for container ``cid`` with ``changes`` applied."""
    state = ContainerState(id=cid, name=f"c-{cid[:4]}", image="/img", rootfs="/img", profile="container",
                           args=("true",), env=("SECRET=s3cr3t",), cwd="/", status=Status.exited,
                           exit_code=0)
    return {**state.to_json(), **changes}


def plant(data_dir: Path, dir_name: str, body: dict[str, Any] | str) -> Path:
    """Write a container directory by hand, as a crafted or corrupted record would be."""
    d = data_dir / "containers" / dir_name
    d.mkdir(parents=True)
    (d / "state.json").write_text(body if isinstance(body, str) else json.dumps(body))
    return d


def processes_mentioning(text: str) -> dict[int, str]:
    """Live (non-zombie) processes whose command line contains ``text``: pid → command line."""
    found: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if text in cmdline and state not in ("Z", "X"):
            found[int(entry)] = cmdline
    return found
