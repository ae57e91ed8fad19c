"""virtiofsd: ready when spawned (we hand it a listening fd), gone when the context exits."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from vz_linux.errors import InvalidConfigError
from vz_linux.vm.virtiofsd import VirtiofsdConfig, virtiofsd

from .procs import alive


def test_accepts_at_once_and_is_reaped(tmp_path: Path) -> None:
    src = tmp_path / "share"
    src.mkdir()
    sock = tmp_path / "fs.sock"
    with virtiofsd(VirtiofsdConfig(source=src, socket_path=sock)) as d:
        pid = d.process.pid
        assert alive(pid)
        c = socket.socket(socket.AF_UNIX)
        c.connect(str(sock))  # no sleep, no retry: the socket listens before the daemon even runs
        c.close()
    assert not alive(pid)
    assert not sock.exists()


def test_missing_source_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(InvalidConfigError, match="not a directory"), \
            virtiofsd(VirtiofsdConfig(source=tmp_path / "nope", socket_path=tmp_path / "s")):
        pass
