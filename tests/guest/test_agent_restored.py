"""RESTORED (docs/PROTOCOL.md) on the real agent in its host test mode: malformed requests get
BAD_PAYLOAD, and a well-formed one is refused there, so a test can never set the host's clock.
The guest side (clock stepped, RNG reseeded) is tested in a real VM: tests/vm/test_snapshot.py."""

from __future__ import annotations

import time

import pytest

from vz_linux.errors import AgentError
from vz_linux.vm.agent_client import AgentClient
from vz_linux.vm.agent_protocol import ENTROPY_MAX, ENTROPY_MIN, ErrorCode, Msg, Tag, encode_frame

from .agent_harness import AgentServer, read_frames

pytestmark = pytest.mark.timeout(120)

HOUR_NS = 3600 * 10**9


def _reply(server: AgentServer, payload: list[tuple[Tag, bytes | int]]) -> tuple[int, int]:
    with server.raw() as sock:
        sock.sendall(encode_frame(Msg.RESTORED, 9, payload))
        (frame,), _ = read_frames(sock, 1)
    return frame.msg, frame.int(Tag.ERROR_CODE) or 0


@pytest.mark.parametrize("payload", [
    [(Tag.DATA, b"x" * 64)],  # no REALTIME_NS
    [(Tag.REALTIME_NS, time.time_ns())],  # no entropy
    [(Tag.REALTIME_NS, time.time_ns()), (Tag.DATA, b"x" * (ENTROPY_MIN - 1))],
    [(Tag.REALTIME_NS, time.time_ns()), (Tag.DATA, b"x" * (ENTROPY_MAX + 1))],
    [(Tag.REALTIME_NS, b"\x00\x01"), (Tag.DATA, b"x" * 64)],  # an integer must be 8 bytes
], ids=["no-time", "no-entropy", "entropy-short", "entropy-long", "time-not-u64"])
def test_malformed_restored_gets_bad_payload(agent_server: AgentServer,
                                             payload: list[tuple[Tag, bytes | int]]) -> None:
    assert _reply(agent_server, payload) == (Msg.ERROR, ErrorCode.BAD_PAYLOAD)
    assert agent_server.proc.poll() is None


def test_host_mode_refuses_and_leaves_the_clock_alone(agent_server: AgentServer, client: AgentClient) -> None:
    # An hour in the past: if the agent obeyed, the host's clock (which this test reads) would show it.
    with pytest.raises(AgentError, match=r"not_permitted"):
        client.restored(realtime_ns=time.time_ns() - HOUR_NS)
    assert abs(time.time_ns() - client.hello().realtime_ns) < HOUR_NS // 2
    assert client.ping(b"still") == b"still"
