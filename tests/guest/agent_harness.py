"""Fixtures for the guest-agent tests: the real agent binary serving on a Unix socket."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from subprocess import Popen

import pytest

from vz_linux.arch import Architecture
from vz_linux.build.agent import build_agent
from vz_linux.run import spawn
from vz_linux.vm.agent_client import AgentClient
from vz_linux.vm.agent_protocol import Field, Frame, FrameReader, encode_frame


@pytest.fixture(scope="session")
def agent_binary() -> Path:
    return build_agent(Architecture.host())


@dataclass
class AgentServer:
    proc: Popen[bytes]
    path: Path

    def client(self) -> AgentClient:
        return AgentClient.connect_unix(self.path, timeout=10)

    def raw(self) -> socket.socket:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(10)
        s.connect(str(self.path))
        return s


@pytest.fixture
def agent_server(agent_binary: Path, tmp_path: Path) -> Iterator[AgentServer]:
    path = tmp_path / "agent.sock"
    log = open(tmp_path / "agent.log", "wb")  # noqa: SIM115 - closed below
    with spawn([agent_binary, "--listen", f"unix:{path}"], stderr=log) as proc:
        deadline = time.monotonic() + 10
        while not path.exists():
            assert proc.poll() is None, "agent exited at startup"
            assert time.monotonic() < deadline, "agent did not create its socket"
            time.sleep(0.01)
        yield AgentServer(proc, path)
        assert proc.poll() is None, "the agent died during the test"
    log.close()


@pytest.fixture
def client(agent_server: AgentServer) -> Iterator[AgentClient]:
    c = agent_server.client()
    yield c
    c.close()


def raw_request(sock: socket.socket, msg: int, rid: int, fields: list[Field] | tuple[()] = ()) -> None:
    sock.sendall(encode_frame(msg, rid, fields))


def read_frames(sock: socket.socket, count: int, *, timeout: float = 10) -> tuple[list[Frame], bool]:
    """Read up to ``count`` frames; returns them and whether the agent closed the stream."""
    reader = FrameReader()
    frames: list[Frame] = []
    sock.settimeout(timeout)
    while len(frames) < count:
        data = sock.recv(65536)
        if not data:
            return frames, True
        frames.extend(reader.feed(data))
    return frames, False


def expect_closed(sock: socket.socket, *, timeout: float = 10) -> bool:
    sock.settimeout(timeout)
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass
    return True


__all__ = ["AgentServer", "agent_binary", "agent_server", "client", "expect_closed",
           "raw_request", "read_frames"]
