"""The host side of port forwarding against a hostile agent: forged credit, floods past flow
control, frames a forward cannot get, oversized messages. Each fails that forward only, which is
aborted in the guest (FORWARD_CLOSE); the channel keeps serving."""

from __future__ import annotations

import pytest

from vz_linux.errors import AgentError, AgentProtocolError
from vz_linux.vm.agent_client import EXEC_INBOX_LIMIT, FORWARD_WINDOW, AgentClient, ForwardChannel
from vz_linux.vm.agent_protocol import Msg, Tag, encode_frame

from .fake_agent import FakeAgent, fake_pair, in_thread
from .test_fake_agent import _assert_still_serving

pytestmark = pytest.mark.timeout(120)


def _open(client: AgentClient, agent: FakeAgent) -> tuple[ForwardChannel, int]:
    opened = in_thread(lambda: client.forward_open(8080, timeout=10))
    req = agent.recv(msg=Msg.FORWARD_OPEN)
    assert req.int(Tag.PORT) == 8080
    agent.send(Msg.OK, req.request_id)
    return opened(10), req.request_id


def _assert_aborted(agent: FakeAgent, rid: int) -> None:
    assert agent.recv(msg=Msg.FORWARD_CLOSE).request_id == rid


def test_credit_for_bytes_never_sent_fails_the_forward() -> None:
    with fake_pair() as (client, agent):
        ch, rid = _open(client, agent)
        ch.send(b"abc")
        agent.recv(msg=Msg.FORWARD_DATA)
        agent.send(Msg.FORWARD_ACK, rid, [(Tag.SIZE, 1 << 30)])  # more than was ever in flight
        with pytest.raises(AgentProtocolError, match="FORWARD_ACK"):
            ch.recv(timeout=10)
        _assert_aborted(agent, rid)
        with pytest.raises(AgentError):
            ch.send(b"more", timeout=5)
        _assert_still_serving(client, agent)


def test_send_waits_for_credit_and_a_silent_guest_times_out() -> None:
    with fake_pair() as (client, agent):
        ch, rid = _open(client, agent)
        sender = in_thread(lambda: ch.send(b"x" * FORWARD_WINDOW, timeout=10))  # the window: no wait
        got = 0
        while got < FORWARD_WINDOW:
            got += len(agent.recv(msg=Msg.FORWARD_DATA).raw(Tag.DATA) or b"")
        sender(10)
        with pytest.raises(AgentError, match="did not read"):
            ch.send(b"y", timeout=1)  # no ACK came: the host never queues beyond the window
        agent.send(Msg.FORWARD_ACK, rid, [(Tag.SIZE, FORWARD_WINDOW)])
        ch.send(b"z", timeout=10)  # credit returned


def test_a_flood_past_flow_control_fails_only_that_forward() -> None:
    with fake_pair() as (client, agent):
        ch, rid = _open(client, agent)
        frame = encode_frame(Msg.FORWARD_RECV, rid, [(Tag.DATA, b"f" * 65536)])
        for _ in range((EXEC_INBOX_LIMIT + (4 << 20)) // 65536):
            assert agent.try_send(frame, timeout=10), "the client stopped reading its socket"
        assert agent.recv(msg=Msg.FLOW).int(Tag.PAUSE) == 1  # it was asked to pause first
        with pytest.raises(AgentProtocolError, match="ignored flow control"):
            while True:
                ch.recv(timeout=10)
        _assert_aborted(agent, rid)
        assert client.pending_requests == 0
        _assert_still_serving(client, agent)


@pytest.mark.parametrize("bad", [
    (Msg.EXIT, [(Tag.EXIT_CODE, 0)]),
    (Msg.FORWARD_RECV, []),  # no DATA
    (Msg.OUTPUT, [(Tag.STREAM, 1), (Tag.DATA, b"x")]),
])
def test_a_frame_a_forward_cannot_get_fails_it(bad: tuple[Msg, list]) -> None:  # type: ignore[type-arg]
    with fake_pair() as (client, agent):
        ch, rid = _open(client, agent)
        agent.send(bad[0], rid, bad[1])
        with pytest.raises(AgentProtocolError, match="unexpected"):
            ch.recv(timeout=10)
        _assert_aborted(agent, rid)
        _assert_still_serving(client, agent)


def test_a_closing_message_is_bounded_and_frees_the_forward() -> None:
    with fake_pair() as (client, agent):
        ch, rid = _open(client, agent)
        agent.send(Msg.FORWARD_CLOSED, rid, [(Tag.MESSAGE, "m" * 100_000)])
        ev = ch.recv(timeout=10)
        assert ev.closed and ev.message is not None and len(ev.message) <= 400
        assert client.pending_requests == 0


def test_a_refused_open_is_a_clean_error() -> None:
    with fake_pair() as (client, agent):
        opened = in_thread(lambda: client.forward_open(81, timeout=10))
        req = agent.recv(msg=Msg.FORWARD_OPEN)
        agent.send(Msg.ERROR, req.request_id, [(Tag.ERROR_CODE, 5), (Tag.MESSAGE, "connect: refused")])
        with pytest.raises(AgentError, match="refused"):
            opened(10)
        assert client.pending_requests == 0
