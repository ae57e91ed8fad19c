"""Fixtures for the foundation tests: an isolated $HOME, no VZ_LINUX_* variables, a fake checkout."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from vz_linux import layout

REPO = Path(__file__).resolve().parents[2]
VZ_LINUX = REPO / ".venv" / "bin" / "vz-linux"
PYTHON = sys.executable


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """$HOME in tmp, VZ_LINUX_* unset, and the 'source checkout' linux/out redirected into tmp
    so a real bundle another engineer built in this checkout never leaks into these tests."""
    for name in list(os.environ):
        if name.startswith("VZ_LINUX_"):
            monkeypatch.delenv(name)
    h = tmp_path / "home"
    h.mkdir()
    monkeypatch.setenv("HOME", str(h))
    out = tmp_path / "checkout" / "linux" / "out"
    monkeypatch.setattr(layout, "default_out_root", lambda: out)
    yield h


def clean_env(home: Path, **extra: str) -> dict[str, str]:
    """Environment for a subprocess: $HOME set, no VZ_LINUX_* from the caller."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VZ_LINUX_")}
    env["HOME"] = str(home)
    env.update(extra)
    return env
