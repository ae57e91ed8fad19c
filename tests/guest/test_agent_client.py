"""Client behaviour the boot engineer relies on: resendable hello, quick timeouts, broken channels."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from vz_linux.errors import AgentError, AgentGoneError, AgentTimeoutError
from vz_linux.version import AGENT_PROTOCOL_REVISION
from vz_linux.vm.agent_client import AgentClient
from vz_linux.vm.agent_protocol import HEADER_SIZE

from .agent_harness import AgentServer

pytestmark = pytest.mark.timeout(120)


def _pump(src: socket.socket, dst: socket.socket, drop_first: int = 0) -> None:
    """Forward bytes, discarding the first ``drop_first`` (a frame lost before the port opened)."""
    try:
        while data := src.recv(65536):
            if drop_first:
                cut = min(drop_first, len(data))
                data, drop_first = data[cut:], drop_first - cut
            if data:
                dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)


@pytest.fixture
def lossy_client(agent_server: AgentServer) -> Iterator[AgentClient]:
    ours, proxy_side = socket.socketpair()
    upstream = agent_server.raw()
    upstream.settimeout(None)
    # The first hello frame (header only) never reaches the agent.
    threading.Thread(target=_pump, args=(proxy_side, upstream, HEADER_SIZE), daemon=True).start()
    threading.Thread(target=_pump, args=(upstream, proxy_side), daemon=True).start()
    c = AgentClient.from_socket(ours)
    yield c
    c.close()


def test_wait_ready_resends_a_lost_hello(lossy_client: AgentClient) -> None:
    attempts: list[int] = []
    hello = lossy_client.wait_ready(30, attempt_timeout=0.3, on_retry=lambda n, _t: attempts.append(n))
    assert hello.protocol_revision == AGENT_PROTOCOL_REVISION
    assert len(attempts) >= 2 and attempts[:2] == [1, 2]
    # The channel is healthy afterwards: later replies are matched to the right requests.
    assert lossy_client.ping(b"after") == b"after"
    assert lossy_client.exec_collect(["echo", "x"]).stdout == b"x\n"


def test_silent_peer_times_out_quickly() -> None:
    ours, theirs = socket.socketpair()
    with AgentClient.from_socket(ours) as c:
        with pytest.raises(AgentTimeoutError):
            c.hello(timeout=0.3)
        with pytest.raises(AgentTimeoutError, match="did not answer hello"):
            c.wait_ready(0.8, attempt_timeout=0.2)
    theirs.close()


def test_channel_closing_fails_every_waiter() -> None:
    ours, theirs = socket.socketpair()
    c = AgentClient.from_socket(ours)
    errors: list[BaseException] = []

    def wait() -> None:
        try:
            c.hello(timeout=30)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=wait) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(0.2)
    theirs.close()
    for t in threads:
        t.join(timeout=30)
    assert len(errors) == 3 and all(type(e) is AgentGoneError for e in errors)
    assert c.broken
    with pytest.raises(AgentError, match=r"closed|reset"):
        c.ping()
    c.close()


def test_garbage_from_peer_is_a_channel_error() -> None:
    ours, theirs = socket.socketpair()
    with AgentClient.from_socket(ours) as c:
        theirs.sendall(b"this is not a frame")
        with pytest.raises(AgentError, match="invalid framing"):
            c.hello(timeout=10)
    theirs.close()


def test_accept_constructor(agent_server: AgentServer, tmp_path: object) -> None:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    path = f"{tmp_path}/host.sock"
    listener.bind(path)
    listener.listen(1)
    with pytest.raises(AgentTimeoutError):
        AgentClient.accept(listener, timeout=0.2)
    # Relay a connection made to OUR listener (as QEMU's chardev would) on to the real agent.
    peer = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    peer.connect(path)
    upstream = agent_server.raw()
    upstream.settimeout(None)
    with AgentClient.accept(listener, timeout=10) as c:
        threading.Thread(target=_pump, args=(peer, upstream), daemon=True).start()
        threading.Thread(target=_pump, args=(upstream, peer), daemon=True).start()
        assert c.hello().protocol_revision == AGENT_PROTOCOL_REVISION
    listener.close()


def test_connect_errors_are_agent_errors(tmp_path: object) -> None:
    with pytest.raises(AgentError, match="cannot connect"):
        AgentClient.connect_unix(f"{tmp_path}/nothing.sock", timeout=1)
    with pytest.raises(AgentError):
        AgentClient.connect_vsock(3, timeout=1)
