"""``-p``: the host-side forwarder against the real agent (on the host: 127.0.0.1 is the same), and
the mapping syntax."""

from __future__ import annotations

import concurrent.futures
import contextlib
import http.server
import socket
import urllib.request
from collections.abc import Iterator

import pytest

from vz_linux.errors import PortInUseError, PortSpecError
from vz_linux.oci.ports import parse_port, parse_ports
from vz_linux.vm.agent_client import AgentClient
from vz_linux.vm.port_forward import ForwardSpec, PortForwarder

from ..local_http import local_http_server

pytestmark = pytest.mark.timeout(120)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = f"path={self.path}\n".encode() * 1000
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def http_server() -> Iterator[int]:
    with local_http_server(_Handler) as port:
        yield port


def test_twenty_concurrent_http_requests_through_the_forward(client: AgentClient, http_server: int) -> None:
    spec = ForwardSpec("127.0.0.1", _free_port(), http_server)
    with PortForwarder((spec,)) as fwd:
        fwd.start(client)

        def get(i: int) -> bytes:
            with urllib.request.urlopen(f"http://127.0.0.1:{spec.host_port}/r{i}", timeout=60) as r:
                return bytes(r.read())

        with concurrent.futures.ThreadPoolExecutor(20) as pool:
            bodies = list(pool.map(get, range(20)))
    assert bodies == [f"path=/r{i}\n".encode() * 1000 for i in range(20)]
    assert fwd.failures == []


def test_no_listener_inside_closes_the_client_and_is_reported(client: AgentClient) -> None:
    spec = ForwardSpec("127.0.0.1", _free_port(), _free_port())
    with PortForwarder((spec,)) as fwd:
        fwd.start(client)
        with socket.create_connection(("127.0.0.1", spec.host_port), timeout=30) as s:
            s.settimeout(30)
            with contextlib.suppress(ConnectionResetError):
                assert s.recv(100) == b""
    assert len(fwd.failures) == 1 and "Connection refused" in fwd.failures[0]
    assert client.ping(b"ok") == b"ok"


def test_port_in_use_fails_before_anything_is_started() -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        free = _free_port()
        fwd = PortForwarder((ForwardSpec("127.0.0.1", free, 80), ForwardSpec("127.0.0.1", port, 80)))
        with pytest.raises(PortInUseError, match="in use"):
            fwd.bind()
        with socket.create_server(("127.0.0.1", free)):  # the first listener was released again
            pass


@pytest.mark.parametrize(("text", "want"), [
    ("8080:80", ForwardSpec("127.0.0.1", 8080, 80)),
    ("0.0.0.0:8080:80/tcp", ForwardSpec("0.0.0.0", 8080, 80)),
    ("[::1]:8080:80", ForwardSpec("::1", 8080, 80)),
    ("127.0.0.2:1:65535", ForwardSpec("127.0.0.2", 1, 65535)),
])
def test_port_specs(text: str, want: ForwardSpec) -> None:
    assert parse_port(text) == want


@pytest.mark.parametrize("text", ["80", "8080:80/udp", "0:80", "8080:65536", "host:8080:80",
                                  "1.2.3:8080:80", "8080:", ":80", "a:b", "8080:80:90:100", ""])
def test_bad_port_specs(text: str) -> None:
    with pytest.raises(PortSpecError):
        parse_port(text)


def test_a_host_port_mapped_twice_is_refused() -> None:
    with pytest.raises(PortSpecError, match="twice"):
        parse_ports(["8080:80", "127.0.0.1:8080:81"])
