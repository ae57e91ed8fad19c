"""Terminals (TTY exec, RESIZE) and port forwarding (FORWARD_*) against the real agent on the host,
including hostile frames for the revision-3 messages (docs/PROTOCOL.md)."""

from __future__ import annotations

import hashlib
import re
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from vz_linux.errors import AgentError
from vz_linux.vm.agent_client import AgentClient, ExecStream, ForwardChannel
from vz_linux.vm.agent_protocol import (
    FWD_QUEUE_LIMIT,
    MAX_FWDS,
    ErrorCode,
    Frame,
    FrameReader,
    Msg,
    Tag,
    encode_field,
    encode_frame,
)

from .agent_harness import AgentServer, read_frames

pytestmark = pytest.mark.timeout(120)


def _read_until(stream: ExecStream, pattern: bytes, limit: float = 20) -> bytes:
    got = b""
    deadline = time.monotonic() + limit
    for chunk in stream:
        got += chunk.data
        if re.search(pattern, got) or time.monotonic() > deadline:
            break
    return got


def test_tty_exec_runs_on_a_pseudo_terminal(client: AgentClient) -> None:
    r = client.exec_stream(["sh", "-c", "tty; stty size; test -t 0 && echo stdin-tty"], tty=True,
                           winsize=(33, 101)).wait()
    lines = r.stdout.replace(b"\r\n", b"\n").decode().split("\n")
    assert re.fullmatch(r"/dev/pts/\d+", lines[0]), r.stdout
    assert lines[1] == "33 101"
    assert "stdin-tty" in lines
    assert r.stderr == b"" and r.exit_code == 0


def test_without_tty_stdio_stays_pipes(client: AgentClient) -> None:
    r = client.exec_collect(["sh", "-c", "tty; echo err >&2"], timeout=20)
    assert r.stdout == b"not a tty\n" and r.stderr == b"err\n"


def test_resize_reaches_the_terminal_and_sends_sigwinch(client: AgentClient) -> None:
    script = 'trap "echo winch" WINCH; echo ready; read x; stty size'
    with client.exec_stream(["sh", "-c", script], tty=True, winsize=(24, 80), close_stdin=False) as s:
        assert b"ready" in _read_until(s, b"ready")
        s.resize(40, 120)
        time.sleep(0.5)  # the trap runs once `read` is interrupted or returns; either order is fine
        s.write_stdin(b"go\n")
        out = _read_until(s, rb"\d+ \d+\r?\n")
        assert b"40 120" in out
        r = s.wait()
    assert r.exit_code == 0


def test_ctrl_c_reaches_the_foreground_process_group(client: AgentClient) -> None:
    script = 'trap "echo got-int; exit 7" INT; echo ready; while :; do sleep 0.1; done'
    with client.exec_stream(["sh", "-c", script], tty=True, close_stdin=False, timeout=60) as s:
        assert b"ready" in _read_until(s, b"ready")
        s.write_stdin(b"\x03")
        out = _read_until(s, b"got-int")
        r = s.wait()
    assert b"got-int" in out
    assert r.exit_code == 7


def test_tty_exec_of_a_missing_program_reports_127(client: AgentClient) -> None:
    r = client.exec_stream(["/no/such/program"], tty=True).wait()
    assert r.exit_code == 127 and "No such file" in (r.error or "")


# --- port forwarding ----------------------------------------------------------------------------
class _Server:
    """A TCP server on 127.0.0.1: reads to EOF, answers with the length and SHA-256, closes."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    @staticmethod
    def _one(conn: socket.socket) -> None:
        with conn:
            h, n = hashlib.sha256(), 0
            while data := conn.recv(65536):
                h.update(data)
                n += len(data)
            conn.sendall(f"{n} {h.hexdigest()}\n".encode())


@pytest.fixture
def tcp_server() -> Iterator[_Server]:
    s = _Server()
    yield s
    s.sock.close()


def _drain(ch: ForwardChannel) -> tuple[bytes, bool]:
    data, eof = b"", False
    while True:
        ev = ch.recv(timeout=30)
        data += ev.data
        eof = eof or ev.eof
        if ev.closed:
            assert ev.message is None
            return data, eof


def test_forward_relays_both_ways_with_half_close(client: AgentClient, tcp_server: _Server) -> None:
    payload = bytes(range(256)) * 12_000  # 3 MiB: more than the window, so ACKs must flow
    with client.forward_open(tcp_server.port) as ch:
        ch.send(payload)
        ch.shutdown_write()
        data, eof = _drain(ch)
    assert eof
    assert data == f"{len(payload)} {hashlib.sha256(payload).hexdigest()}\n".encode()


def test_forward_many_concurrent_connections(client: AgentClient, tcp_server: _Server) -> None:
    results: list[bytes] = []

    def one(i: int) -> None:
        with client.forward_open(tcp_server.port) as ch:
            ch.send(b"x" * i)
            ch.shutdown_write()
            results.append(_drain(ch)[0])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(int(r.split()[0]) for r in results) == list(range(20))


def test_forward_to_a_port_with_no_listener_fails_cleanly(client: AgentClient) -> None:
    s = socket.create_server(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with pytest.raises(AgentError, match=r"Connection refused.*not_found"):
        client.forward_open(port)
    assert client.ping(b"alive") == b"alive"


# --- hostile frames -----------------------------------------------------------------------------
def _u64_4(tag: Tag) -> bytes:
    return encode_field(tag, b"\0\0\0\1")  # an integer of the wrong width


def _reply(sock: socket.socket, msg: int, rid: int, payload: bytes) -> Frame:
    header = encode_frame(msg, rid)[:8]  # magic, type, flags, id: the payload is raw bytes
    sock.sendall(header + len(payload).to_bytes(4, "big") + payload)
    frames, closed = read_frames(sock, 1)
    assert not closed and frames
    return frames[0]


@pytest.mark.parametrize(("msg", "payload"), [
    (Msg.RESIZE, b""),
    (Msg.RESIZE, encode_field(Tag.ROWS, 0) + encode_field(Tag.COLS, 80)),
    (Msg.RESIZE, encode_field(Tag.ROWS, 70000) + encode_field(Tag.COLS, 80)),
    (Msg.RESIZE, _u64_4(Tag.ROWS) + encode_field(Tag.COLS, 80)),
    (Msg.FORWARD_OPEN, b""),
    (Msg.FORWARD_OPEN, encode_field(Tag.PORT, 0)),
    (Msg.FORWARD_OPEN, encode_field(Tag.PORT, 65536)),
    (Msg.FORWARD_OPEN, _u64_4(Tag.PORT)),
    (Msg.FORWARD_OPEN, encode_field(Tag.PORT, 80) + encode_field(Tag.PATH, "a\0b")),
    (Msg.EXEC, encode_field(Tag.ARGV, "true") + encode_field(Tag.TTY, True) + encode_field(Tag.ROWS, 0)),
    (Msg.EXEC, encode_field(Tag.ARGV, "true") + encode_field(Tag.COLS, 1 << 40)),
    (Msg.FORWARD_DATA, encode_field(Tag.DATA, "x")[:-1]),  # truncated field
], ids=lambda v: v.name if isinstance(v, Msg) else "")
def test_bad_values_are_refused_and_the_agent_serves_on(agent_server: AgentServer, msg: Msg,
                                                        payload: bytes) -> None:
    with agent_server.raw() as sock:
        f = _reply(sock, msg, 7, payload)
        assert (f.msg, f.request_id, f.int(Tag.ERROR_CODE)) == (Msg.ERROR, 7, ErrorCode.BAD_PAYLOAD)
    with agent_server.client() as c:
        assert c.ping(b"ok") == b"ok"


def test_frames_for_unknown_forwards_and_execs_are_ignored(agent_server: AgentServer) -> None:
    with agent_server.raw() as sock:
        for m in (Msg.FORWARD_DATA, Msg.FORWARD_CLOSE):
            sock.sendall(encode_frame(m, 99, [(Tag.DATA, b"x"), (Tag.EOF, True)]))
        sock.sendall(encode_frame(Msg.RESIZE, 98, [(Tag.ROWS, 10), (Tag.COLS, 10)]))
        sock.sendall(encode_frame(Msg.PING, 5, [(Tag.DATA, b"p")]))
        frames, _ = read_frames(sock, 1)
    assert [(f.msg, f.request_id) for f in frames] == [(Msg.OK, 5)]


def test_resize_of_a_pipe_exec_is_refused(client: AgentClient) -> None:
    with client.exec_stream(["sh", "-c", "read x"], close_stdin=False, timeout=20) as s:
        s.resize(10, 10)
        time.sleep(0.5)  # the resize goes out through the control thread
        s.write_stdin(b"x\n")
        r = s.wait()
    assert r.exit_code == 0
    assert any("no terminal" in e for e in s.errors)


def test_a_host_that_ignores_the_window_loses_only_that_connection(agent_server: AgentServer) -> None:
    """A listener that never reads: the agent queues at most FWD_QUEUE_LIMIT, then drops the forward."""
    stuck = socket.create_server(("127.0.0.1", 0))
    stuck.listen(1)
    with agent_server.raw() as sock:
        sock.sendall(encode_frame(Msg.FORWARD_OPEN, 3, [(Tag.PORT, stuck.getsockname()[1])]))
        frames, _ = read_frames(sock, 1)
        assert frames[0].msg == Msg.OK
        chunk = b"z" * (512 << 10)
        for _ in range((FWD_QUEUE_LIMIT + (16 << 20)) // len(chunk)):  # past queue + socket buffers
            sock.sendall(encode_frame(Msg.FORWARD_DATA, 3, [(Tag.DATA, chunk)]))
        reader, closed_msg = FrameReader(), None
        sock.settimeout(30)
        while closed_msg is None:
            for f in reader.feed(sock.recv(65536)):
                if f.msg == Msg.FORWARD_CLOSED and f.raw(Tag.EOF) is None:
                    closed_msg = f.str(Tag.MESSAGE)
    stuck.close()
    assert "over its limit" in closed_msg
    with agent_server.client() as c:
        assert c.ping(b"ok") == b"ok"


def test_forward_table_is_bounded(agent_server: AgentServer, tcp_server: _Server) -> None:
    with agent_server.raw() as sock:
        for rid in range(1, MAX_FWDS + 2):
            sock.sendall(encode_frame(Msg.FORWARD_OPEN, rid, [(Tag.PORT, tcp_server.port)]))
        frames, _ = read_frames(sock, MAX_FWDS + 1, timeout=30)
    busy = [f for f in frames if f.msg == Msg.ERROR]
    assert len([f for f in frames if f.msg == Msg.OK]) == MAX_FWDS
    assert [f.int(Tag.ERROR_CODE) for f in busy] == [ErrorCode.BUSY]


@pytest.mark.parametrize("msg", [0x0C, 0x0F, 0x14, 0x80, 0x90, 0x92])
def test_gaps_and_reply_types_are_unknown_requests(agent_server: AgentServer, msg: int) -> None:
    with agent_server.raw() as sock:
        f = _reply(sock, msg, 9, b"")
    assert (f.msg, f.int(Tag.ERROR_CODE)) == (Msg.ERROR, ErrorCode.UNKNOWN_TYPE)
