"""The real agent binary (on the host, ``--listen unix:``) against hostile values and floods.

Frames that parse but carry values the agent must refuse, and the backpressure path end to end:
a flood nobody reads is paused in the agent (its child blocks on a full pipe) instead of piling
up in the host (docs/PROTOCOL.md, "Flow control"; docs/security.md).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from vz_linux.build.agent import agent_source_dir
from vz_linux.vm.agent_client import EXEC_INBOX_LIMIT, AgentClient
from vz_linux.vm.agent_protocol import MAX_TIMEOUT_MS, ErrorCode, Msg, Tag

from ..guest.agent_harness import AgentServer, agent_binary, agent_server, client, raw_request, read_frames

__all__ = ["agent_binary", "agent_server", "client"]  # fixtures used here

pytestmark = pytest.mark.timeout(120)


def test_limit_matches_the_agent_header() -> None:
    assert f"#define VZ_MAX_TIMEOUT_MS (1ull << {MAX_TIMEOUT_MS.bit_length() - 1})" in \
        (agent_source_dir() / "protocol.h").read_text()


@pytest.mark.parametrize("msg", [Msg.EXEC, Msg.PROBE])
@pytest.mark.parametrize("timeout_ms", [2**63, 2**64 - 1, MAX_TIMEOUT_MS + 1])
def test_agent_refuses_a_timeout_over_its_limit(agent_server: AgentServer, msg: Msg, timeout_ms: int) -> None:
    # Today's bug: now + 2^63 ms overflows into the past, so the child was SIGKILLed at once.
    fields = [(Tag.ARGV, "sleep"), (Tag.ARGV, "3")] if msg is Msg.EXEC else \
        [(Tag.NAME, "demo"), (Tag.SNIPPET, "sleep 3")]
    sock = agent_server.raw()
    raw_request(sock, msg, 7, [*fields, (Tag.TIMEOUT_MS, timeout_ms)])
    (reply,), closed = read_frames(sock, 1)
    assert not closed
    assert (reply.msg, reply.int(Tag.ERROR_CODE)) == (Msg.ERROR, ErrorCode.BAD_PAYLOAD), reply
    assert "timeout_ms" in reply.str(Tag.MESSAGE)
    # Nothing was started for it, and the connection serves on.
    raw_request(sock, Msg.PING, 8, [(Tag.DATA, b"ok")])
    (pong,), _ = read_frames(sock, 1)
    assert (pong.request_id, pong.raw(Tag.DATA)) == (8, b"ok")
    sock.close()


def test_the_longest_timeout_is_still_honoured(client: AgentClient) -> None:
    stream = client.exec_stream(["sh", "-c", "echo started; sleep 1; echo done"], timeout=MAX_TIMEOUT_MS / 1000)
    result = stream.wait()
    assert not result.timed_out and result.exit_code == 0 and result.stdout == b"started\ndone\n"


def _written(pid: int) -> int:
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    raise AssertionError("no wchar")


def test_a_flood_nobody_reads_blocks_in_the_guest_not_in_the_host(client: AgentClient) -> None:
    stream = client.exec_stream(["cat", "/dev/zero"], timeout=60)
    # Nobody iterates: the client pauses the exec, the agent stops reading its pipe, `cat` blocks.
    deadline = time.monotonic() + 30
    before = -1
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = _written(stream.pid)
        if now == before:
            break
        before = now
    assert now == before, "cat kept writing: nothing applied backpressure"
    assert stream.queued_bytes <= EXEC_INBOX_LIMIT
    assert client.ping(b"x", timeout=10) == b"x"  # the channel itself is not blocked
    # Reading resumes the flood; closing the stream kills it.
    got = 0
    for chunk in stream:
        got += len(chunk.data)
        if got > 4 * EXEC_INBOX_LIMIT:
            break
    assert _written(stream.pid) > before
    stream.close()
    deadline = time.monotonic() + 10
    while Path(f"/proc/{stream.pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(f"/proc/{stream.pid}").exists(), "closing the stream left its command running"
