"""Malformed input from a raw socket: an error reply or a closed stream, and the agent keeps serving."""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import time
from pathlib import Path

import pytest

from vz_linux.vm.agent_protocol import (
    MAX_PAYLOAD,
    ErrorCode,
    FrameReader,
    Msg,
    Tag,
    encode_field,
    encode_frame,
)

from .agent_harness import AgentServer, expect_closed, read_frames

pytestmark = pytest.mark.timeout(120)


def _frame(msg: int, rid: int, payload: bytes) -> bytes:
    return struct.pack(">2sBBII", b"VZ", msg, 0, rid, len(payload)) + payload


def _still_serves(server: AgentServer) -> None:
    assert server.proc.poll() is None
    with server.client() as c:
        assert c.exec_collect(["echo", "ok"], timeout=20).stdout == b"ok\n"


def _error(sock: socket.socket) -> tuple[int, int, str]:
    frames, _ = read_frames(sock, 1)
    assert frames, "no error reply"
    f = frames[0]
    assert f.msg == Msg.ERROR
    return f.request_id, f.int(Tag.ERROR_CODE) or 0, f.str(Tag.MESSAGE)


def _ping_ok(sock: socket.socket, rid: int) -> None:
    sock.sendall(encode_frame(Msg.PING, rid, [(Tag.DATA, b"alive")]))
    frames, _ = read_frames(sock, 1)
    assert frames[0].msg == Msg.OK and frames[0].request_id == rid and frames[0].raw(Tag.DATA) == b"alive"


@pytest.mark.parametrize(
    ("name", "payload_frame", "code"),
    [
        ("unknown type", _frame(0x42, 7, b""), ErrorCode.UNKNOWN_TYPE),
        ("reply type sent to agent", _frame(Msg.OK, 7, b""), ErrorCode.UNKNOWN_TYPE),
        ("truncated field header", _frame(Msg.PING, 7, b"\x00\x05\x00"), ErrorCode.BAD_PAYLOAD),
        ("field longer than payload", _frame(Msg.HELLO, 7, struct.pack(">HI", 5, 1000) + b"abc"),
         ErrorCode.BAD_PAYLOAD),
        ("exec without argv", _frame(Msg.EXEC, 7, encode_field(Tag.EOF, True)), ErrorCode.BAD_PAYLOAD),
        ("exec argv with NUL", _frame(Msg.EXEC, 7, encode_field(Tag.ARGV, b"tr\x00ue")), ErrorCode.BAD_PAYLOAD),
        ("exec empty argv0", _frame(Msg.EXEC, 7, encode_field(Tag.ARGV, b"")), ErrorCode.BAD_PAYLOAD),
        ("exec bad env", _frame(Msg.EXEC, 7, encode_field(Tag.ARGV, "true") + encode_field(Tag.ENV, "NOEQUALS")),
         ErrorCode.BAD_PAYLOAD),
        ("integer of wrong width", _frame(Msg.EXEC, 7, encode_field(Tag.ARGV, "true")
                                          + struct.pack(">HI", Tag.TIMEOUT_MS, 3) + b"abc"), ErrorCode.BAD_PAYLOAD),
        ("signal without fields", _frame(Msg.SIGNAL, 7, b""), ErrorCode.BAD_PAYLOAD),
        ("signal number out of range", _frame(Msg.SIGNAL, 7, encode_field(Tag.EXEC_ID, 1)
                                              + encode_field(Tag.SIGNAL, 99999)), ErrorCode.BAD_PAYLOAD),
        ("read_file without path", _frame(Msg.READ_FILE, 7, b""), ErrorCode.BAD_PAYLOAD),
        ("write_file without data", _frame(Msg.WRITE_FILE, 7, encode_field(Tag.PATH, "/tmp/x")),
         ErrorCode.BAD_PAYLOAD),
        ("probe without snippet", _frame(Msg.PROBE, 7, encode_field(Tag.NAME, "x")), ErrorCode.BAD_PAYLOAD),
        ("stdin for unknown exec", _frame(Msg.STDIN, 7, encode_field(Tag.DATA, b"x")), ErrorCode.NOT_FOUND),
        ("poweroff bad action", _frame(Msg.POWEROFF, 7, encode_field(Tag.ACTION, 9)), ErrorCode.BAD_PAYLOAD),
    ],
)
def test_bad_frame_gets_error_and_stream_continues(agent_server: AgentServer, name: str,
                                                   payload_frame: bytes, code: ErrorCode) -> None:
    with agent_server.raw() as s:
        s.sendall(payload_frame)
        rid, got, msg = _error(s)
        assert (rid, got) == (7, code), msg
        assert msg
        _ping_ok(s, 8)  # the same stream is still usable


def test_bad_magic_closes_stream(agent_server: AgentServer) -> None:
    with agent_server.raw() as s:
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        _, code, _ = _error(s)
        assert code == ErrorCode.FRAMING
        assert expect_closed(s)
    _still_serves(agent_server)


def test_oversized_frame_closes_stream_without_reading_it(agent_server: AgentServer) -> None:
    with agent_server.raw() as s:
        s.sendall(struct.pack(">2sBBII", b"VZ", Msg.PING, 0, 9, MAX_PAYLOAD + 1))
        rid, code, _ = _error(s)
        assert (rid, code) == (9, ErrorCode.TOO_BIG)
        assert expect_closed(s)
    with agent_server.raw() as s:
        s.sendall(struct.pack(">2sBBII", b"VZ", Msg.EXEC, 0, 10, 0xFFFFFFFF))
        rid, code, _ = _error(s)
        assert (rid, code) == (10, ErrorCode.TOO_BIG)
    _still_serves(agent_server)


def test_truncated_frame_then_eof(agent_server: AgentServer) -> None:
    full = encode_frame(Msg.EXEC, 3, [(Tag.ARGV, "sleep"), (Tag.ARGV, "1000")])
    for cut in (1, 5, 11, 12, len(full) - 1):
        with agent_server.raw() as s:
            s.sendall(full[:cut])
            s.shutdown(socket.SHUT_WR)
            frames, closed = read_frames(s, 1)
            assert closed and not frames  # nothing half-executed, no reply to half a request
    _still_serves(agent_server)


def test_payload_at_the_limit_is_accepted(agent_server: AgentServer) -> None:
    with agent_server.raw() as s:
        data = os.urandom(MAX_PAYLOAD - 6)
        s.sendall(encode_frame(Msg.PING, 4, [(Tag.DATA, data)]))
        frames, _ = read_frames(s, 1, timeout=30)
        assert frames[0].msg == Msg.OK and frames[0].raw(Tag.DATA) == data


def test_half_close_still_delivers_results(agent_server: AgentServer, tmp_path: Path) -> None:
    # The exec waits for a gate the test opens only after the half-close: it is surely still running
    # when the host stops writing, and its output and EXIT must still arrive.
    gate = tmp_path / "gate"
    with agent_server.raw() as s:
        s.sendall(encode_frame(Msg.EXEC, 5, [(Tag.ARGV, "sh"), (Tag.ARGV, "-c"),
                                             (Tag.ARGV, f"while [ ! -e {gate} ]; do sleep 0.05; done; echo late"),
                                             (Tag.EOF, True)]))
        s.shutdown(socket.SHUT_WR)
        reader = FrameReader()
        frames = []
        while not frames:
            data = s.recv(65536)
            assert data, "the agent closed a half-closed stream with an exec running"
            frames.extend(reader.feed(data))
        assert frames[0].msg == Msg.STARTED
        gate.write_text("")
        while len(frames) < 3:
            data = s.recv(65536)
            assert data, f"closed before the exec's result: {frames}"
            frames.extend(reader.feed(data))
        assert [f.msg for f in frames] == [Msg.STARTED, Msg.OUTPUT, Msg.EXIT]
        assert frames[1].raw(Tag.DATA) == b"late\n"
        assert expect_closed(s)


def test_random_garbage(agent_server: AgentServer) -> None:
    for seed in range(5):
        with agent_server.raw() as s:
            junk = bytes((seed * 37 + i * 101) % 256 for i in range(50_000))
            # The agent may close before we finish: that is an accepted outcome.
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                s.sendall(b"VZ" + junk)
            expect_closed(s)
    _still_serves(agent_server)


def test_many_frames_in_one_write_and_split_across_writes(agent_server: AgentServer) -> None:
    blob = b"".join(encode_frame(Msg.PING, i, [(Tag.DATA, str(i).encode())]) for i in range(1, 201))
    with agent_server.raw() as s:
        s.sendall(blob)
        frames, _ = read_frames(s, 200)
        assert [f.request_id for f in frames] == list(range(1, 201))
        for i in range(0, len(blob), 7):  # byte-dribbled frames are reassembled
            s.sendall(blob[i : i + 7])
        frames, _ = read_frames(s, 200)
        assert [f.raw(Tag.DATA) for f in frames] == [str(i).encode() for i in range(1, 201)]


def test_stdio_mode(agent_binary: Path) -> None:
    import subprocess

    req = encode_frame(Msg.HELLO, 1) + encode_frame(Msg.EXEC, 2, [(Tag.ARGV, "echo"), (Tag.ARGV, "hi"),
                                                                  (Tag.EOF, True)])
    # stdin closes right after the requests: the agent still finishes them, flushes, then exits.
    p = subprocess.run([str(agent_binary), "--stdio"], input=req, capture_output=True, timeout=30)
    from vz_linux.vm.agent_protocol import FrameReader

    frames = list(FrameReader().feed(p.stdout))
    assert p.returncode == 0
    assert frames[0].msg == Msg.OK and frames[0].request_id == 1
    by_type = {f.msg: f for f in frames if f.request_id == 2}
    assert set(by_type) == {Msg.STARTED, Msg.OUTPUT, Msg.EXIT}
    assert by_type[Msg.OUTPUT].raw(Tag.DATA) == b"hi\n" and by_type[Msg.EXIT].int(Tag.EXIT_CODE) == 0


def test_cli_usage_errors(agent_binary: Path) -> None:
    import subprocess

    v = subprocess.run([str(agent_binary), "--version"], capture_output=True, text=True, timeout=10)
    from vz_linux.version import AGENT_PROTOCOL_REVISION, AGENT_VERSION

    assert v.returncode == 0 and v.stdout.strip() == f"vz-agent {AGENT_VERSION} protocol {AGENT_PROTOCOL_REVISION}"
    for argv in (["--bogus"], ["--listen", "tcp:1"], ["--probe", "nothing"]):
        r = subprocess.run([str(agent_binary), *argv], capture_output=True, text=True, timeout=10)
        assert r.returncode == 2 and r.stderr.strip()


def test_no_fd_or_memory_leak_across_connections(agent_server: AgentServer) -> None:
    pid = agent_server.proc.pid

    def fds() -> int:
        return len(os.listdir(f"/proc/{pid}/fd"))

    def rss_kib() -> int:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def cycle() -> None:
        with agent_server.client() as c:
            c.exec_collect(["true"])
            c.exec_collect(["/no/such/program"])
            c.ping(os.urandom(256 * 1024))
        with agent_server.raw() as s:
            s.sendall(b"garbage!" * 10)
            expect_closed(s)
        with agent_server.raw() as s:
            s.sendall(encode_frame(Msg.EXEC, 1, [(Tag.ARGV, "sleep"), (Tag.ARGV, "100")]))
            read_frames(s, 1)  # STARTED; then the connection drops with the exec running

    def settled_fds() -> int:
        # Killed execs of dropped connections finish asynchronously: wait for the count to settle.
        last, deadline = fds(), time.monotonic() + 15
        while time.monotonic() < deadline:
            time.sleep(0.3)
            now = fds()
            if now == last:
                return now
            last = now
        return last

    for _ in range(5):  # warm up: buffers reach their working size
        cycle()
    before_fds, before_rss = settled_fds(), rss_kib()
    for _ in range(40):
        cycle()
    _still_serves(agent_server)
    assert settled_fds() == before_fds
    assert rss_kib() - before_rss < 4096  # 40 cycles of 256 KiB pings would leak >10 MiB
