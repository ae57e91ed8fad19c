"""Edge cases docs/PROTOCOL.md promises, checked on the real agent with raw frames.

No host client here: its own pre-checks (stdin limit, file limit) would hide what the agent does.
"""

from __future__ import annotations

import os
import signal
import socket
import struct
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest

from vz_linux.vm.agent_protocol import (
    FILE_LIMIT,
    ErrorCode,
    Field,
    Frame,
    FrameReader,
    Msg,
    Tag,
    encode_frame,
)

from .agent_harness import AgentServer

pytestmark = pytest.mark.timeout(180)

STDIN_LIMIT = 8 << 20  # docs/PROTOCOL.md: queued stdin per exec
EVIDENCE_TAIL = 4096  # docs/PROTOCOL.md: PROBE evidence is the last 4 KiB
MAX_EXECS = 128  # docs/PROTOCOL.md: at most 128 execs at once, then ERROR BUSY
UNKNOWN_TAG = 4242


class Raw:
    """One raw connection to the agent; frames are read through one FrameReader (no bytes lost)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.reader = FrameReader()
        self.queued: list[Frame] = []

    def send(self, msg: int, rid: int, fields: Iterable[Field] = (), extra: bytes = b"") -> None:
        frame = encode_frame(msg, rid, fields)
        if extra:  # raw field bytes appended (unknown tags), with the header's length fixed up
            payload = frame[12:] + extra
            frame = struct.pack(">2sBBII", b"VZ", msg, 0, rid, len(payload)) + payload
        self.sock.sendall(frame)

    def next(self, timeout: float = 30) -> Frame:
        deadline = time.monotonic() + timeout
        while not self.queued:
            left = deadline - time.monotonic()
            assert left > 0, "no frame from the agent in time"
            self.sock.settimeout(left)
            data = self.sock.recv(1 << 20)
            assert data, "the agent closed the connection"
            self.queued.extend(self.reader.feed(data))
        return self.queued.pop(0)

    def until(self, done: Callable[[Frame], bool], timeout: float = 60) -> list[Frame]:
        """Frames up to and including the first for which ``done`` holds."""
        deadline = time.monotonic() + timeout
        out: list[Frame] = []
        while True:
            f = self.next(max(0.1, deadline - time.monotonic()))
            out.append(f)
            if done(f):
                return out

    def run(self, rid: int, argv: list[str], fields: Iterable[Field] = (), extra: bytes = b"",
            timeout: float = 60) -> list[Frame]:
        """EXEC and every frame of it up to its EXIT (or ERROR)."""
        self.send(Msg.EXEC, rid, [*((Tag.ARGV, a) for a in argv), *fields, (Tag.EOF, True)], extra)
        return self.until(lambda f: f.request_id == rid and f.msg in (Msg.EXIT, Msg.ERROR), timeout)


def _stdout(frames: list[Frame]) -> bytes:
    return b"".join(f.raw(Tag.DATA) or b"" for f in frames if f.msg == Msg.OUTPUT and f.int(Tag.STREAM) == 1)


def _unknown_field(value: bytes) -> bytes:
    return struct.pack(">HI", UNKNOWN_TAG, len(value)) + value


@pytest.fixture
def raw(agent_server: AgentServer) -> Raw:
    return Raw(agent_server.raw())


def test_unknown_tags_are_ignored(raw: Raw) -> None:
    frames = raw.run(1, ["echo", "ran"], extra=_unknown_field(b"from a newer host"))
    assert [f.msg for f in frames] == [Msg.STARTED, Msg.OUTPUT, Msg.EXIT]
    assert _stdout(frames) == b"ran\n" and frames[-1].int(Tag.EXIT_CODE) == 0
    raw.send(Msg.PING, 2, [(Tag.DATA, b"p")], extra=_unknown_field(b"x" * 8))
    reply = raw.next()
    assert (reply.msg, reply.request_id, reply.raw(Tag.DATA)) == (Msg.OK, 2, b"p")


def test_exec_failures_are_127_for_missing_and_126_for_not_executable(raw: Raw, tmp_path: Path) -> None:
    not_exec = tmp_path / "script"
    not_exec.write_text("#!/bin/sh\necho should not run\n")
    not_exec.chmod(0o644)  # exists, but no execute bit: EACCES (even for root)
    for rid, path, code, reason in ((1, str(tmp_path / "absent"), 127, "No such file"),
                                    (2, str(not_exec), 126, "Permission denied"),
                                    (3, str(tmp_path), 126, "Permission denied")):  # a directory
        frames = raw.run(rid, [path])
        assert [f.msg for f in frames] == [Msg.STARTED, Msg.OUTPUT, Msg.EXIT], path
        assert frames[0].int(Tag.PID) is None  # nothing was started
        exit_ = frames[-1]
        assert exit_.int(Tag.EXIT_CODE) == code, (path, exit_)
        assert exit_.str(Tag.MESSAGE) == f"exec {path}: {os.strerror(2 if code == 127 else 13)}"
        assert reason.encode() in (frames[1].raw(Tag.DATA) or b"")


def test_write_file_limit_on_the_agent(raw: Raw, tmp_path: Path) -> None:
    (tmp_path / "w").mkdir()
    exact, over = tmp_path / "w" / "exact", tmp_path / "w" / "over"
    data = os.urandom(FILE_LIMIT)
    raw.send(Msg.WRITE_FILE, 1, [(Tag.PATH, str(exact)), (Tag.DATA, data)])
    ok = raw.next()
    assert (ok.msg, ok.int(Tag.SIZE)) == (Msg.OK, FILE_LIMIT)
    assert exact.read_bytes() == data
    raw.send(Msg.WRITE_FILE, 2, [(Tag.PATH, str(over)), (Tag.DATA, data + b"!")])
    err = raw.next()
    assert (err.msg, err.request_id, err.int(Tag.ERROR_CODE)) == (Msg.ERROR, 2, ErrorCode.LIMIT)
    assert sorted(p.name for p in (tmp_path / "w").iterdir()) == ["exact"]  # nothing written, no temp file


def test_stdin_limit_on_the_agent_drops_the_excess(raw: Raw, tmp_path: Path) -> None:
    # The child reads nothing until the gate file exists, so everything sent queues in the agent.
    gate = tmp_path / "gate"
    script = f"while [ ! -e {gate} ]; do sleep 0.05; done; wc -c"
    raw.send(Msg.EXEC, 1, [(Tag.ARGV, "sh"), (Tag.ARGV, "-c"), (Tag.ARGV, script)])
    assert raw.next().msg == Msg.STARTED
    chunk, chunks = 1_000_000, 10
    for _ in range(chunks):
        raw.send(Msg.STDIN, 1, [(Tag.DATA, os.urandom(chunk))])
    raw.send(Msg.STDIN, 1, [(Tag.EOF, True)])
    raw.send(Msg.PING, 2)  # answered after every STDIN frame before it was handled
    before_ping = raw.until(lambda f: f.request_id == 2)
    limits = [f for f in before_ping if f.msg == Msg.ERROR]
    assert limits and all(f.request_id == 1 and f.int(Tag.ERROR_CODE) == ErrorCode.LIMIT for f in limits)
    gate.write_text("")
    frames = raw.until(lambda f: f.request_id == 1 and f.msg == Msg.EXIT)
    received = int(_stdout(frames))
    assert received == (chunks - len(limits)) * chunk  # the refused frames' data was dropped, whole
    assert received <= STDIN_LIMIT + (1 << 20)  # queued at most 8 MiB (+ what the pipe held)


def test_busy_at_128_execs(raw: Raw, agent_server: AgentServer) -> None:
    for rid in range(1, MAX_EXECS + 1):
        raw.send(Msg.EXEC, rid, [(Tag.ARGV, "sleep"), (Tag.ARGV, "1000")])
    started = raw.until(lambda f: f.request_id == MAX_EXECS)
    assert [f.msg for f in started] == [Msg.STARTED] * MAX_EXECS
    raw.send(Msg.EXEC, 999, [(Tag.ARGV, "true")])
    busy = raw.next()
    assert (busy.msg, busy.request_id, busy.int(Tag.ERROR_CODE)) == (Msg.ERROR, 999, ErrorCode.BUSY)
    # Another connection shares the limit; once one exec ends, a new one is accepted.
    with agent_server.raw() as s2:
        other = Raw(s2)
        other.send(Msg.EXEC, 5, [(Tag.ARGV, "true")])
        assert other.next().int(Tag.ERROR_CODE) == ErrorCode.BUSY
    raw.send(Msg.SIGNAL, 1000, [(Tag.EXEC_ID, 1), (Tag.SIGNAL, 9)])
    raw.until(lambda f: f.request_id == 1 and f.msg == Msg.EXIT)
    frames = raw.run(1001, ["echo", "room again"])
    assert _stdout(frames) == b"room again\n"


def test_repeated_scalar_tags_last_one_wins(raw: Raw, tmp_path: Path) -> None:
    frames = raw.run(1, ["pwd"], [(Tag.CWD, "/"), (Tag.CWD, str(tmp_path))])
    assert _stdout(frames) == f"{tmp_path}\n".encode()
    frames = raw.run(3, ["sleep", "30"], [(Tag.TIMEOUT_MS, 600_000), (Tag.TIMEOUT_MS, 300)])
    assert frames[-1].int(Tag.TIMED_OUT) == 1 and frames[-1].int(Tag.SIGNAL) == 9
    raw.send(Msg.PING, 4, [(Tag.DATA, b"first"), (Tag.DATA, b"last")])
    assert raw.next().raw(Tag.DATA) == b"last"
    target = tmp_path / "f"
    raw.send(Msg.WRITE_FILE, 5, [(Tag.PATH, str(tmp_path / "not-this")), (Tag.PATH, str(target)),
                                 (Tag.DATA, b"one"), (Tag.DATA, b"two"), (Tag.MODE, 0o600), (Tag.MODE, 0o640)])
    assert raw.next().msg == Msg.OK
    assert target.read_bytes() == b"two" and target.stat().st_mode & 0o777 == 0o640
    assert not (tmp_path / "not-this").exists()
    # ARGV and ENV are lists: every one counts, in order.
    frames = raw.run(6, ["sh", "-c", 'echo "$0 $1 $A $B"', "x", "y"], [(Tag.ENV, "A=1"), (Tag.ENV, "B=2")])
    assert _stdout(frames) == b"x y 1 2\n"


def test_request_id_0_is_refused(raw: Raw, tmp_path: Path) -> None:
    # Ids are any u32 except 0 (0 is what framing errors carry): nothing may run under it.
    marker = tmp_path / "ran"
    raw.send(Msg.EXEC, 0, [(Tag.ARGV, "touch"), (Tag.ARGV, str(marker)), (Tag.EOF, True)])
    err = raw.next()
    assert (err.msg, err.request_id, err.int(Tag.ERROR_CODE)) == (Msg.ERROR, 0, ErrorCode.BAD_PAYLOAD)
    raw.send(Msg.PING, 0)
    assert raw.next().int(Tag.ERROR_CODE) == ErrorCode.BAD_PAYLOAD
    raw.send(Msg.PING, 7, [(Tag.DATA, b"ok")])
    assert raw.next().raw(Tag.DATA) == b"ok"  # the stream goes on
    assert not marker.exists()


def test_probe_evidence_is_the_last_4_kib(raw: Raw) -> None:
    snippet = 'i=0; while [ $i -lt 1500 ]; do echo "line $i"; echo "err $i" >&2; i=$((i+1)); done; exit 3'
    raw.send(Msg.PROBE, 1, [(Tag.NAME, "demo"), (Tag.SNIPPET, snippet)])
    reply = raw.next()
    assert reply.msg == Msg.OK and reply.int(Tag.PASS) == 0 and reply.int(Tag.EXIT_CODE) == 3
    evidence = reply.raw(Tag.EVIDENCE) or b""
    assert len(evidence) == EVIDENCE_TAIL
    assert evidence.endswith(b"line 1499\nerr 1499\n")  # stdout and stderr combined, in order, the tail
    small = raw.run(2, ["true"])  # (the channel is still in sync)
    assert small[-1].int(Tag.EXIT_CODE) == 0
    raw.send(Msg.PROBE, 3, [(Tag.NAME, "short"), (Tag.SNIPPET, "echo short")])
    assert raw.next().raw(Tag.EVIDENCE) == b"short\n"


def _status(text: str, key: str) -> int:
    [line] = [ln for ln in text.splitlines() if ln.startswith(key + ":")]
    return int(line.split()[1], 16)


def test_child_gets_clean_signals_and_its_own_session(raw: Raw) -> None:
    frames = raw.run(1, ["cat", "/proc/self/status", "/proc/self/stat"])
    pid = frames[0].int(Tag.PID)
    out = _stdout(frames).decode()
    status, stat = out.rsplit("\n", 2)[0], out.rstrip("\n").rsplit("\n", 1)[1]
    assert _status(status, "SigBlk") == 0  # the agent's blocked SIGCHLD/SIGTERM/... are unblocked
    assert _status(status, "SigIgn") & (1 << (13 - 1)) == 0  # SIGPIPE back to default
    fields = stat.rsplit(")", 1)[1].split()
    assert int(fields[2]) == pid and int(fields[3]) == pid  # process group and session: its own
    # And SIGPIPE really kills: a writer into a closed pipe dies by signal 13 (status 141), it does
    # not get EPIPE and exit 1 as it would with SIGPIPE ignored.
    frames = raw.run(2, ["sh", "-c", '{ yes; echo "yes=$?" >&2; } | true'])
    stderr = b"".join(f.raw(Tag.DATA) or b"" for f in frames if f.msg == Msg.OUTPUT and f.int(Tag.STREAM) == 2)
    assert stderr == b"yes=141\n"


def test_exit_comes_2s_after_the_child_when_a_grandchild_holds_the_pipe(raw: Raw) -> None:
    t0 = time.monotonic()
    frames = raw.run(1, ["sh", "-c", "sleep 60 & echo $!"], timeout=30)
    elapsed = time.monotonic() - t0
    os.kill(int(_stdout(frames)), signal.SIGKILL)  # (the grandchild, still holding the pipe)
    assert frames[-1].int(Tag.EXIT_CODE) == 0
    # EXIT waits the documented grace for the pipe's EOF, then goes out though `sleep 60` holds it.
    assert 1.9 <= elapsed < 30


def test_a_client_more_than_64_mib_behind_is_disconnected(agent_server: AgentServer) -> None:
    pings = 80  # 80 replies of 1 MiB queue up while this client reads nothing
    payload = os.urandom((1 << 20) - 64)
    sent = 0
    with agent_server.raw() as s:
        try:
            for rid in range(1, pings + 1):
                s.sendall(encode_frame(Msg.PING, rid, [(Tag.DATA, payload)]))
                sent += 1
        except (BrokenPipeError, ConnectionResetError):
            pass  # the agent dropped us while we were still sending: that is the point
        received, closed = 0, False
        s.settimeout(30)
        try:
            while data := s.recv(1 << 20):
                received += len(data)
            closed = True
        except ConnectionResetError:
            closed = True
        except TimeoutError:
            pass
    assert closed, "the agent kept a client that stopped reading"
    assert received < sent * len(payload)  # replies were dropped, not all delivered
    with agent_server.client() as c:  # everyone else is still served
        assert c.ping(b"fine") == b"fine"
