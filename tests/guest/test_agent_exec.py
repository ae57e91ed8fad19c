"""The real agent binary over --listen unix:, driven by the real host client."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from vz_linux.errors import AgentError
from vz_linux.version import AGENT_PROTOCOL_REVISION, AGENT_VERSION
from vz_linux.vm.agent_client import AgentClient, AgentHello
from vz_linux.vm.agent_protocol import Stream

from .agent_harness import AgentServer

pytestmark = pytest.mark.timeout(120)


def _dead(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):  # gone, or exiting while we read (ESRCH)
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def test_hello_carries_revision_version_and_clocks(client: AgentClient) -> None:
    h = client.hello()
    assert isinstance(h, AgentHello)
    assert h.protocol_revision == AGENT_PROTOCOL_REVISION
    assert h.agent_version == AGENT_VERSION
    assert h.release == os.uname().release and h.sysname == "Linux"
    assert h.machine == os.uname().machine
    assert h.transport == "unix"
    # Same machine: the guest's CLOCK_MONOTONIC is the host's, so it lies inside the round trip.
    assert h.host_sent_ns <= h.monotonic_ns <= h.host_received_ns
    assert 0 < h.agent_start_boottime_ns <= h.boottime_ns
    assert h.agent_start_monotonic_ns <= h.monotonic_ns
    boottime = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
    assert abs(boottime - h.boottime_ns) < 60 * 10**9


def test_ping_echoes(client: AgentClient) -> None:
    assert client.ping() == b""
    assert client.ping(b"\x00\xffpayload") == b"\x00\xffpayload"


def test_exec_true_false(client: AgentClient) -> None:
    ok = client.exec_collect(["true"])
    assert (ok.exit_code, ok.signal, ok.ok) == (0, None, True)
    bad = client.exec_collect(["false"])
    assert (bad.exit_code, bad.signal, bad.ok) == (1, None, False)


def test_exec_missing_binary_is_a_clear_error(client: AgentClient) -> None:
    r = client.exec_collect(["/no/such/binary-vz", "arg"])
    assert r.exit_code == 127
    assert r.error is not None and "No such file" in r.error and "/no/such/binary-vz" in r.error
    assert b"No such file" in r.stderr
    r = client.exec_collect(["no-such-program-on-path-vz"])
    assert r.exit_code == 127 and r.error is not None


def test_exec_killed_by_signal(client: AgentClient) -> None:
    r = client.exec_collect(["sh", "-c", "kill -TERM $$; sleep 5"])
    assert r.signal == signal.SIGTERM and r.exit_code is None and not r.ok


def test_stdout_stderr_env_cwd(client: AgentClient, tmp_path: Path) -> None:
    r = client.exec_collect(["sh", "-c", 'echo "out:$VZ_T"; echo "err:$(pwd)" >&2; exit 7'],
                            env={"VZ_T": "a b=c"}, cwd=str(tmp_path))
    assert r.exit_code == 7
    assert r.stdout == b"out:a b=c\n"
    assert r.stderr == f"err:{tmp_path}\n".encode()
    bad = client.exec_collect(["true"], cwd=str(tmp_path / "missing"))
    assert bad.exit_code == 127 and bad.error is not None and "No such file" in bad.error


def test_stdin_round_trip_and_1mib_intact(client: AgentClient) -> None:
    small = client.exec_collect(["cat"], stdin=b"hello\x00world\n")
    assert small.stdout == b"hello\x00world\n"
    # 1 MiB + a bit: crosses the inline-stdin chunk, several STDIN frames and many OUTPUT chunks.
    data = os.urandom(1024 * 1024 + 12345)
    r = client.exec_collect(["cat"], stdin=data)
    assert r.exit_code == 0
    assert len(r.stdout) == len(data) and r.stdout == data
    # Output the agent generates itself, checked against its own digest.
    r = client.exec_collect(["sh", "-c", "head -c 1048576 /dev/urandom | tee /dev/stderr | sha256sum"])
    import hashlib
    assert len(r.stderr) == 1048576
    assert r.stdout.split()[0].decode() == hashlib.sha256(r.stderr).hexdigest()


def test_interactive_stdin_and_streaming(client: AgentClient) -> None:
    s = client.exec_stream(["cat"], close_stdin=False, timeout=30)
    s.write_stdin(b"line one\n")
    it = iter(s)
    first = next(it)
    assert first.stream is Stream.STDOUT and first.data == b"line one\n"
    s.write_stdin(b"two\n")
    s.close_stdin()
    rest = b"".join(o.data for o in it)
    assert rest == b"two\n"
    assert s.result is not None and s.result.exit_code == 0
    assert s.result.stdout == b""  # streaming keeps nothing it handed out (docs/security.md)


def test_twenty_concurrent_execs(client: AgentClient, tmp_path: Path) -> None:
    results: dict[int, bytes] = {}
    errors: list[BaseException] = []
    # A barrier: each command checks in, then waits until all 20 have. Serialised execs would never
    # get there and time out, so passing proves they really run at the same time.
    barrier = (f'touch {tmp_path}/in.$N; while [ "$(ls {tmp_path} | wc -l)" -lt 20 ]; do sleep 0.05; done; '
               'echo "n=$N"')

    def one(i: int) -> None:
        try:
            r = client.exec_collect(["sh", "-c", barrier], env={"N": str(i)}, timeout=60)
            assert r.exit_code == 0, r.describe()
            results[i] = r.stdout
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=90)
    assert not errors
    assert results == {i: f"n={i}\n".encode() for i in range(20)}


def test_flooding_child_does_not_stall_others(client: AgentClient) -> None:
    flood = client.exec_stream(["cat", "/dev/zero"], timeout=60)
    seen = 0
    for out in flood:
        seen += len(out.data)
        if seen > 8 * 1024 * 1024:
            break
    # While the flood keeps going, other requests on the same channel are answered.
    for _ in range(5):
        assert client.ping(b"x", timeout=10) == b"x"
    assert client.exec_collect(["echo", "still here"], timeout=20).stdout == b"still here\n"
    flood.signal(signal.SIGKILL)
    result = flood.wait()
    assert result.signal == signal.SIGKILL


def test_timeout_kills_child_and_grandchildren(client: AgentClient) -> None:
    s = client.exec_stream(["sh", "-c", "sleep 1000 & echo $!; wait"], timeout=1.0)
    result = s.wait()
    assert result.timed_out and result.signal == signal.SIGKILL
    grandchild = int(result.stdout.split()[0])
    deadline = time.monotonic() + 10
    while not _dead(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _dead(grandchild), "the timed-out exec's grandchild survived"
    assert _dead(result.pid)


def test_signal_running_exec(client: AgentClient) -> None:
    s = client.exec_stream(["sleep", "1000"], timeout=60)
    client.signal(s.exec_id, signal.SIGTERM)
    assert s.wait().signal == signal.SIGTERM
    with pytest.raises(AgentError, match="no running exec"):
        client.signal(s.exec_id, signal.SIGTERM)
    with pytest.raises(AgentError, match="no running exec"):
        client.signal(987654, signal.SIGTERM)


def test_file_read_write(client: AgentClient, tmp_path: Path) -> None:
    target = tmp_path / "f.bin"
    data = os.urandom(300_000)
    client.write_file(str(target), data, mode=0o600)
    assert target.read_bytes() == data
    assert target.stat().st_mode & 0o777 == 0o600
    assert not [p for p in tmp_path.iterdir() if "vz-tmp" in p.name]
    assert client.read_file(str(target)) == data
    assert client.read_file("/proc/self/status").startswith(b"Name:")
    with pytest.raises(AgentError, match="No such file"):
        client.read_file(str(tmp_path / "missing"))
    with pytest.raises(AgentError, match="No such file"):
        client.write_file(str(tmp_path / "no-dir" / "x"), b"x")
    big = tmp_path / "big"
    big.write_bytes(b"x" * (600 * 1024))
    with pytest.raises(AgentError, match="limit"):
        client.read_file(str(big))
    with pytest.raises(AgentError, match="limit"):
        client.read_file(str(target), max_size=1000)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(AgentError, match="not a regular file"):
        client.read_file(str(fifo), timeout=10)


def test_probe_pass_fail_and_io_uring(client: AgentClient, agent_binary: Path) -> None:
    p = client.probe("demo", "echo evidence-here")
    assert p.passed and p.exit_code == 0 and "evidence-here" in p.evidence
    f = client.probe("demo", "echo to-stderr >&2; exit 3")
    assert not f.passed and f.exit_code == 3 and "to-stderr" in f.evidence
    # PROBE runs any snippet; here the agent's own io_uring probe (tests/guest/test_agent_probes.py).
    io = client.probe("io_uring", f"{agent_binary} --probe io_uring")
    assert io.passed, io.evidence
    assert "NOP submitted and completed" in io.evidence
    slow = client.probe("slow", "sleep 100", timeout=0.5)
    assert not slow.passed and slow.timed_out


def test_poweroff_refused_on_host(client: AgentClient, agent_server: AgentServer) -> None:
    # --listen is the host test mode: poweroff must never reboot the machine running the tests.
    with pytest.raises(AgentError, match="disabled"):
        client.poweroff()
    assert client.ping() == b""


def test_many_clients_and_reconnect(agent_server: AgentServer) -> None:
    clients = [agent_server.client() for _ in range(5)]
    for c in clients:
        assert c.hello().protocol_revision == AGENT_PROTOCOL_REVISION
    # A client that goes away mid-exec: its command is killed, the agent keeps serving.
    s = clients[0].exec_stream(["sh", "-c", "echo $$; exec sleep 1000"], timeout=60)
    pid = int(next(iter(s)).data.split()[0])
    clients[0].close()
    deadline = time.monotonic() + 10
    while not _dead(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _dead(pid)
    for c in clients[1:]:
        assert c.exec_collect(["true"]).exit_code == 0
        c.close()


def test_stdin_over_the_agent_limit_is_refused_up_front(client: AgentClient) -> None:
    with pytest.raises(AgentError, match="stdin limit"):
        client.exec_collect(["cat"], stdin=b"x" * (9 << 20))
    assert client.ping() == b""


def _children(pid: int) -> list[tuple[int, str]]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(fields[1]) == pid:
            out.append((int(stat.parent.name), fields[0]))
    return out


def test_children_and_orphans_are_reaped(client: AgentClient, agent_server: AgentServer, tmp_path: Path) -> None:
    for _ in range(30):
        assert client.exec_collect(["true"]).exit_code == 0
    # A background grandchild outlives its shell, is re-parented to the agent (child subreaper)
    # and must be reaped by it when it exits, not left as a zombie. It runs until the test opens
    # the gate, so "still running when adopted" never depends on timing.
    gate = tmp_path / "gate"
    waiter = f"while [ ! -e {gate} ]; do sleep 0.05; done"
    r = client.exec_collect(["sh", "-c", f"sh -c '{waiter}' </dev/null >/dev/null 2>&1 & echo $!"])
    orphan = int(r.stdout)
    adopted = dict(_children(agent_server.proc.pid))
    assert orphan in adopted and adopted[orphan] != "Z"  # adopted by the agent, still running
    gate.write_text("")
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and (_children(agent_server.proc.pid) or not _dead(orphan)):
        time.sleep(0.05)
    assert _children(agent_server.proc.pid) == []
    assert not Path(f"/proc/{orphan}").exists()
