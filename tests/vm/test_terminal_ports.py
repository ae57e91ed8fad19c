"""`vz-linux run -t/-i/-p` end to end on a real QEMU guest (TCG), driven through a real PTY: the CLI's
stdin/stdout are the slave of a pty this test holds the master of (Python's ``pty``/``os.openpty``),
and it is the CLI's controlling terminal, so window changes really arrive as SIGWINCH."""

from __future__ import annotations

import concurrent.futures
import os
import re
import signal
import socket
import subprocess
import sys
import termios
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from benchmarks import term as term_bench
from benchmarks.figures import Figures

from ..pty_cli import PtyCli, assert_closed_at_once, comparable, set_size

pytestmark = [pytest.mark.vm, pytest.mark.kernel, pytest.mark.slow, pytest.mark.timeout(900)]


@pytest.fixture
def pty_cli(container_bundle: Path) -> Iterator[Callable[..., PtyCli]]:
    made: list[PtyCli] = []

    def make(args: list[str], rows: int = 30, cols: int = 100) -> PtyCli:
        argv = [sys.executable, "-c", "from vz_linux.cli.main import main; main()", "run", "--bundle-dir",
                str(container_bundle), "--accel", "tcg", "--cold", *args]
        made.append(PtyCli(argv, rows=rows, cols=cols))
        return made[-1]

    yield make
    for c in made:
        c.close()


def test_tty_resize_ctrl_c_and_terminal_restored(pty_cli: Callable[..., PtyCli]) -> None:
    script = ('tty; stty size; echo ready; read x; stty size; '
              'trap "echo got-int; exit 9" INT; echo armed; while :; do sleep 0.1; done')
    cli = pty_cli(["-t", "-i", "--", "sh", "-c", script], rows=30, cols=100)
    out = cli.read_until(rb"ready")
    assert re.search(rb"/dev/pts/\d+\r\n30 100\r\n", out), out
    assert termios.tcgetattr(cli.slave)[3] & termios.ECHO == 0  # raw mode while attached
    set_size(cli.master, 45, 132)  # the kernel sends SIGWINCH to the CLI → RESIZE
    time.sleep(2)
    cli.write(b"x\r")
    assert b"45 132" in cli.read_until(rb"armed")
    cli.write(b"\x03")  # raw mode: the byte goes to the guest terminal, whose driver makes SIGINT
    cli.read_until(rb"got-int")
    assert cli.wait() == 9
    assert comparable(termios.tcgetattr(cli.slave)) == comparable(cli.before)


def test_terminal_restored_after_the_vm_is_killed(pty_cli: Callable[..., PtyCli]) -> None:
    cli = pty_cli(["-t", "-i", "--", "sh", "-c", "echo up; sleep 1000"])
    cli.read_until(rb"up")
    qemus = cli.qemu_pids()
    assert qemus, "no QEMU child found"
    for q in qemus:
        os.kill(q, signal.SIGKILL)
    code = cli.wait()
    assert code not in (0, 1), cli.out[-2000:]
    assert b"Traceback" not in cli.out
    assert comparable(termios.tcgetattr(cli.slave)) == comparable(cli.before)


def test_terminal_restored_after_sigterm(pty_cli: Callable[..., PtyCli]) -> None:
    cli = pty_cli(["-t", "-i", "--", "sh", "-c", "echo up; sleep 1000"])
    cli.read_until(rb"up")
    assert termios.tcgetattr(cli.slave)[3] & termios.ECHO == 0
    cli.proc.send_signal(signal.SIGTERM)  # run_cli turns it into an exception: everything unwinds
    code = cli.wait()
    assert code != 0 and b"Traceback" not in cli.out
    assert comparable(termios.tcgetattr(cli.slave)) == comparable(cli.before)
    assert cli.qemu_pids() == []


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_publish_serves_20_concurrent_requests_and_refuses_a_dead_port(container_bundle: Path) -> None:
    web, dead = _free_port(), _free_port()
    script = ("mkdir -p /tmp/www && for i in $(seq 0 19); do echo page-$i > /tmp/www/p$i; done; "
              "busybox httpd -p 127.0.0.1:8080 -h /tmp/www && echo serving; read x; echo bye")
    proc = subprocess.Popen(
        [sys.executable, "-c", "from vz_linux.cli.main import main; main()", "run", "--bundle-dir",
         str(container_bundle), "--accel", "tcg", "--cold", "-i", "-p", f"{web}:8080",
         "-p", f"127.0.0.1:{dead}:8081", "--", "sh", "-c", script],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdin is not None
        assert proc.stdout.readline() == b"serving\n"

        def get(i: int) -> bytes:
            with urllib.request.urlopen(f"http://127.0.0.1:{web}/p{i}", timeout=120) as r:
                return bytes(r.read())

        with concurrent.futures.ThreadPoolExecutor(20) as pool:
            assert list(pool.map(get, range(20))) == [f"page-{i}\n".encode() for i in range(20)]
        assert_closed_at_once(dead)  # nothing listens on 8081 inside
        assert get(3) == b"page-3\n"  # the forward still serves after the refused one
        proc.stdin.close()  # `read x` returns: the command ends
        assert proc.wait(120) == 0
        assert proc.stdout.read() == b"bye\n"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_term_benchmark_smoke(metrics: Figures, container_bundle: Path) -> None:
    """benchmarks/term.py measures what its names say (a few keys, 4 MiB); no speed is asserted."""
    term_bench.measure(metrics, container_bundle, keys=5, mib=4)
    for name in ("keystroke_echo_p50", "keystroke_echo_p95", "keystroke_echo_cli_p50", "keystroke_echo_cli_p95"):
        assert metrics.get(name).unit == "ms" and metrics.get(name).value > 0
    assert metrics.get("keystroke_echo_p50").n == 5
    for name in ("forward_download_mibps", "virtiofs_copy_mibps", "exec_stdout_mibps"):
        assert metrics.get(name).unit == "MiB/s" and metrics.get(name).value > 0
