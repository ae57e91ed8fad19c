"""The host client against a hostile agent: floods, forbidden values, silence, restarts, disconnects.

The agent here is :class:`tests.hostile.fake_agent.FakeAgent`, the named fake for faults a real
guest cannot be made to produce on demand (docs/security.md, "Hostile guests"); the real client
runs unchanged. The VM tests in test_guest_vm.py make a real guest misbehave.
"""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Callable

import pytest

from vz_linux.errors import AgentGoneError, AgentProtocolError, InvalidConfigError
from vz_linux.vm.agent_client import (
    EXEC_INBOX_LIMIT,
    FLOW_PAUSE_AT,
    FLOW_RESUME_AT,
    AgentClient,
    ExecStream,
)
from vz_linux.vm.agent_protocol import TLV_HEADER, Frame, Msg, Tag, encode_frame

from .fake_agent import FakeAgent, fake_pair, in_thread

pytestmark = pytest.mark.timeout(120)

CHUNK = b"y" * 32768  # what the real agent puts in one OUTPUT frame


def _exec(client: AgentClient, agent: FakeAgent) -> tuple[ExecStream, int]:
    """An exec the fake agent has started; returns the stream and its request id."""
    stream = client.exec_stream(["yes"], wait_started=False)
    req = agent.recv(msg=Msg.EXEC)
    agent.start_exec(req)
    return stream, req.request_id


def _assert_killed(agent: FakeAgent, rid: int) -> None:
    kill = agent.recv(msg=Msg.SIGNAL)
    assert (kill.int(Tag.EXEC_ID), kill.int(Tag.SIGNAL)) == (rid, 9)


def _assert_still_serving(client: AgentClient, agent: FakeAgent) -> None:
    ping = in_thread(lambda: client.ping(b"still here", timeout=10))
    req = agent.recv(msg=Msg.PING)
    agent.send(Msg.OK, req.request_id, [(Tag.DATA, b"still here")])
    assert ping(10) == b"still here"


# --- bounded memory ----------------------------------------------------------------------------
def test_streaming_keeps_nothing_it_handed_out() -> None:
    with fake_pair() as (client, agent):
        stream, rid = _exec(client, agent)
        for _ in range(64):
            agent.output(rid, CHUNK)
        agent.exit(rid)
        assert sum(len(c.data) for c in stream) == 64 * len(CHUNK)
        assert stream.result is not None and stream.result.exit_code == 0
        # Handed out means gone: a streaming consumer's output is never kept a second time.
        assert stream.result.stdout == b"" and stream.queued_bytes == 0
        # wait() is the collector: it keeps what it collects.
        collected, rid = _exec(client, agent)
        agent.output(rid, b"kept\n")
        agent.exit(rid)
        assert collected.wait().stdout == b"kept\n"
        assert client.pending_requests == 0


def test_a_flood_nobody_reads_pauses_that_exec_and_nothing_else() -> None:
    with fake_pair() as (client, agent):
        stream, rid = _exec(client, agent)
        frame = encode_frame(Msg.OUTPUT, rid, [(Tag.STREAM, 1), (Tag.DATA, CHUNK)])
        sent = 0
        # An honest agent stops reading the exec's pipe when told to pause; count what it sent first.
        while not agent.sent_of(Msg.FLOW) and sent < 64 << 20:
            assert agent.try_send(frame, timeout=10), "the client stopped reading its socket"
            sent += len(CHUNK)
            agent.poll()
        pause = agent.recv(msg=Msg.FLOW)
        assert (pause.request_id, pause.int(Tag.PAUSE)) == (rid, 1)
        assert sent < 4 * FLOW_PAUSE_AT, f"{sent} bytes went out before the client asked for a pause"
        assert stream.queued_bytes <= EXEC_INBOX_LIMIT
        # No head-of-line blocking: other requests on the channel are served while the flood waits.
        _assert_still_serving(client, agent)
        # Reading drains the inbox, and below the low-water mark the client asks for more.
        drained, it = 0, iter(stream)
        while drained < sent - FLOW_RESUME_AT + len(CHUNK):
            drained += len(next(it).data)
        resume = agent.recv(msg=Msg.FLOW)
        assert (resume.request_id, resume.int(Tag.PAUSE)) == (rid, 0)
        agent.exit(rid)
        drained += sum(len(c.data) for c in it)
        assert drained == sent and stream.result is not None


def test_an_agent_that_ignores_flow_control_fails_its_exec() -> None:
    with fake_pair() as (client, agent):
        stream, rid = _exec(client, agent)
        frame = encode_frame(Msg.OUTPUT, rid, [(Tag.STREAM, 1), (Tag.DATA, CHUNK)])
        for _ in range((EXEC_INBOX_LIMIT + (4 << 20)) // len(CHUNK)):
            assert agent.try_send(frame, timeout=10), "the client stopped reading its socket"
        agent.exit(rid)
        with pytest.raises(AgentProtocolError, match="ignored flow control"):
            stream.wait(max_output=None)
        _assert_killed(agent, rid)
        assert client.pending_requests == 0  # nothing stale: later frames for it are dropped
        agent.output(rid, CHUNK)
        _assert_still_serving(client, agent)


# --- bad values --------------------------------------------------------------------------------
def _raw_field(tag: Tag, raw: bytes) -> bytes:
    return TLV_HEADER.pack(int(tag), len(raw)) + raw


def _frame_with_raw(msg: Msg, rid: int, raw_fields: bytes) -> bytes:
    return encode_frame(msg, rid)[:8] + len(raw_fields).to_bytes(4, "big") + raw_fields


NEG_ONE = 2**64 - 1  # -1 as the wire's u64

EXEC_CASES: dict[str, Callable[[FakeAgent, int], None]] = {
    "unknown stream id": lambda a, rid: a.send(Msg.OUTPUT, rid, [(Tag.STREAM, 3), (Tag.DATA, b"x")]),
    "output without data": lambda a, rid: a.send(Msg.OUTPUT, rid, [(Tag.STREAM, 1)]),
    "stream id of 4 bytes": lambda a, rid: a.sock.sendall(_frame_with_raw(
        Msg.OUTPUT, rid, _raw_field(Tag.STREAM, b"\0\0\0\1") + _raw_field(Tag.DATA, b"x"))),
    "negative exit code": lambda a, rid: a.send(Msg.EXIT, rid, [(Tag.EXIT_CODE, NEG_ONE), (Tag.TIMED_OUT, 0)]),
    "exit code and signal": lambda a, rid: a.send(Msg.EXIT, rid, [(Tag.EXIT_CODE, 0), (Tag.SIGNAL, 9)]),
    "neither exit code nor signal": lambda a, rid: a.send(Msg.EXIT, rid, [(Tag.TIMED_OUT, 0)]),
    "signal out of range": lambda a, rid: a.send(Msg.EXIT, rid, [(Tag.SIGNAL, 4096)]),
    "timed_out not a flag": lambda a, rid: a.send(Msg.EXIT, rid, [(Tag.EXIT_CODE, 0), (Tag.TIMED_OUT, 7)]),
    "exit with a negative pid": lambda a, rid: a.send(Msg.EXIT, rid, [(Tag.EXIT_CODE, 0), (Tag.PID, NEG_ONE)]),
    "a second STARTED": lambda a, rid: a.send(Msg.STARTED, rid, [(Tag.PID, 78)]),
    "a reply type for another request": lambda a, rid: a.send(Msg.OK, rid, []),
}


@pytest.mark.parametrize("case", list(EXEC_CASES))
def test_exec_frame_with_bad_values_fails_only_that_exec(case: str) -> None:
    with fake_pair() as (client, agent):
        stream, rid = _exec(client, agent)
        agent.output(rid, b"fine so far\n")
        EXEC_CASES[case](agent, rid)
        with pytest.raises(AgentProtocolError, match="bad frame for exec yes"):
            for _ in stream:
                pass
        _assert_killed(agent, rid)
        assert client.pending_requests == 0
        agent.exit(rid)  # a late frame for the failed exec is dropped, not misdelivered
        _assert_still_serving(client, agent)


REPLY_CASES: dict[str, tuple[Callable[[AgentClient], object], Msg, Callable[[FakeAgent, Frame], None]]] = {
    "ping answered with OUTPUT": (lambda c: c.ping(b"x"), Msg.PING,
                                  lambda a, req: a.output(req.request_id, b"x")),
    "read_file: negative size": (lambda c: c.read_file("/etc/hostname"), Msg.READ_FILE,
                                 lambda a, req: a.send(Msg.OK, req.request_id,
                                                       [(Tag.SIZE, NEG_ONE), (Tag.DATA, b"abc")])),
    "read_file: size is not the data's": (lambda c: c.read_file("/etc/hostname"), Msg.READ_FILE,
                                          lambda a, req: a.send(Msg.OK, req.request_id,
                                                                [(Tag.SIZE, 10), (Tag.DATA, b"abc")])),
    "probe: pass not a flag": (lambda c: c.probe("demo", "true"), Msg.PROBE,
                               lambda a, req: a.send(Msg.OK, req.request_id,
                                                     [(Tag.PASS, 7), (Tag.EXIT_CODE, 0), (Tag.TIMED_OUT, 0)])),
}


@pytest.mark.parametrize("case", list(REPLY_CASES))
def test_reply_with_bad_values_is_a_protocol_error(case: str) -> None:
    call, msg, answer = REPLY_CASES[case]
    with fake_pair() as (client, agent):
        done = in_thread(lambda: call(client))
        answer(agent, agent.recv(msg=msg))
        with pytest.raises(AgentProtocolError):
            done(10)
        assert client.pending_requests == 0
        _assert_still_serving(client, agent)


@pytest.mark.parametrize("timeout", [1e300, 2.0**63 / 1000, math.inf, math.nan, -1.0, 0.0])
def test_timeouts_the_agent_would_refuse_are_refused_before_sending(timeout: float) -> None:
    with fake_pair() as (client, agent):
        with pytest.raises(InvalidConfigError, match="timeout"):
            client.exec_collect(["true"], timeout=timeout)
        with pytest.raises(InvalidConfigError, match="timeout"):
            client.probe("demo", "true", timeout=timeout)
        agent.poll()
        assert agent.sent_of(Msg.EXEC) == [] and agent.sent_of(Msg.PROBE) == []
        assert client.pending_requests == 0


# --- a client that goes away ---------------------------------------------------------------------
def test_closing_or_dropping_a_stream_kills_its_command() -> None:
    with fake_pair() as (client, agent):
        stream, rid = _exec(client, agent)
        stream.close()
        _assert_killed(agent, rid)
        assert client.pending_requests == 0
        # Leaving its `with` block on an error (a sink whose reader went away) kills it too.
        with pytest.raises(BrokenPipeError), client.exec_stream(["yes"], wait_started=False):
            req = agent.recv(msg=Msg.EXEC)
            raise BrokenPipeError
        _assert_killed(agent, req.request_id)
        # So does dropping the last reference without closing it.
        stream, rid = _exec(client, agent)
        del stream
        gc.collect()
        _assert_killed(agent, rid)
        assert client.pending_requests == 0


# --- a dead agent ---------------------------------------------------------------------------------
KEEPALIVE = (0.3, 1.5)  # seconds: interval, timeout


def test_closed_channel_fails_a_pending_exec_as_agent_gone() -> None:
    with fake_pair() as (client, agent):
        stream, _rid = _exec(client, agent)
        agent.sock.close()
        with pytest.raises(AgentGoneError, match="closed the connection") as e:
            stream.wait()
        assert e.value.exit_code == 45 and client.broken


def test_restarted_agent_fails_pending_execs_and_serves_on() -> None:
    with fake_pair(keepalive=KEEPALIVE) as (client, agent):
        stream, _rid = _exec(client, agent)
        # The channel goes quiet; the client's keepalive hello is answered by another agent process
        # (what a guest's init does after `kill -9 -1` took the agent with it).
        agent.answer_hello(agent.recv(msg=Msg.HELLO, timeout=10), pid=9999)
        with pytest.raises(AgentGoneError, match="restarted"):
            in_thread(stream.wait)(10)
        assert client.pending_requests == 0 and not client.broken
        _assert_still_serving(client, agent)


def test_silent_agent_fails_pending_execs() -> None:
    with fake_pair(keepalive=KEEPALIVE) as (client, agent):
        stream, _rid = _exec(client, agent)
        # Connected but mute (killed mid-frame: the rest of the stream never parses again).
        with pytest.raises(AgentGoneError, match="stopped answering"):
            in_thread(stream.wait)(15)
        assert client.broken
        agent.poll()
        assert len(agent.sent_of(Msg.HELLO)) >= 2  # the handshake, then unanswered keepalives


def test_a_live_agent_keeps_its_long_execs() -> None:
    with fake_pair(keepalive=KEEPALIVE) as (client, agent):
        stream, rid = _exec(client, agent)
        waiting = in_thread(stream.wait)
        end = time.monotonic() + 4 * KEEPALIVE[1]
        answered = 0
        while time.monotonic() < end:  # several keepalive timeouts pass; the same agent answers
            agent.answer_hello(agent.recv(msg=Msg.HELLO, timeout=10))
            answered += 1
        agent.exit(rid, code=3)
        assert waiting(10).exit_code == 3
        assert answered >= 2 and not client.broken
