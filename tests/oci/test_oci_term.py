"""`vz oci run -it -p` and `vz oci exec -it` end to end: real QEMU (TCG), crun on the agent's terminal,
a real PTY on the host side, and busybox httpd inside the container's own network namespace reached
through the forward."""

from __future__ import annotations

import concurrent.futures
import os
import re
import signal
import socket
import subprocess
import termios
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ..pty_cli import PtyCli, assert_closed_at_once, comparable, set_size
from .test_oci_vm import VZ, container_bundle, vz, vz_env

pytestmark = [pytest.mark.vm, pytest.mark.kernel, pytest.mark.slow, pytest.mark.timeout(900)]
__all__ = ["container_bundle", "vz", "vz_env"]  # fixtures shared with test_oci_vm.py

Vz = Callable[..., subprocess.CompletedProcess[str]]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def pty_vz(vz_env: dict[str, str], tmp_path: Path, vz: Vz) -> Iterator[Callable[..., PtyCli]]:
    made: list[PtyCli] = []
    env = dict(vz_env, VZ_OCI_DATA_DIR=str(tmp_path / "oci"))  # the same data dir as `vz`

    def make(*args: str, rows: int = 30, cols: int = 100) -> PtyCli:
        made.append(PtyCli([str(VZ), *args], rows=rows, cols=cols, env=env))
        return made[-1]

    yield make
    for c in made:
        c.close()


def test_run_it_with_publish(pty_vz: Callable[..., PtyCli], busybox_rootfs: Path) -> None:
    port = _free_port()
    script = ("mkdir -p /tmp/www && for i in $(seq 0 19); do echo page-$i > /tmp/www/p$i; done; "
              # In the foreground and stopped at the end: without a PID namespace (container
              # profile) a daemon left behind keeps `crun run` waiting (docs/oci.md).
              "httpd -f -p 127.0.0.1:80 -h /tmp/www & hp=$!; "
              "until wget -q -O /dev/null http://127.0.0.1/p0; do sleep 0.2; done; tty; stty size; echo ready; read x; stty size; "
              'trap "kill $hp; echo got-int; exit 9" INT; echo armed; while :; do sleep 0.1; done')
    cli = pty_vz("oci", "run", "--rm", "-it", "-p", f"{port}:80", "--kernel-profile", "container",
                 str(busybox_rootfs), "--", "sh", "-c", script, rows=30, cols=100)
    out = cli.read_until(rb"ready")
    assert re.search(rb"/dev/pts/\d+\r\n30 100\r\n", out), out

    def get(i: int) -> bytes:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/p{i}", timeout=120) as r:
            return bytes(r.read())

    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        assert list(pool.map(get, range(20))) == [f"page-{i}\n".encode() for i in range(20)]
    set_size(cli.master, 45, 132)
    time.sleep(2)
    cli.write(b"x\r")
    assert b"45 132" in cli.read_until(rb"armed")
    cli.write(b"\x03")
    cli.read_until(rb"got-int")
    assert cli.wait() == 9
    assert comparable(termios.tcgetattr(cli.slave)) == comparable(cli.before)


def test_run_it_terminal_restored_after_the_vm_is_killed(pty_vz: Callable[..., PtyCli],
                                                          busybox_rootfs: Path) -> None:
    cli = pty_vz("oci", "run", "--rm", "-it", "--kernel-profile", "container", str(busybox_rootfs), "--",
                 "sh", "-c", "echo up; sleep 1000")
    cli.read_until(rb"up")
    qemus = cli.qemu_pids()
    assert qemus
    for q in qemus:
        os.kill(q, signal.SIGKILL)
    code = cli.wait()
    assert code not in (0, 1) and b"Traceback" not in cli.out, cli.out[-2000:]
    assert comparable(termios.tcgetattr(cli.slave)) == comparable(cli.before)


def test_run_p_port_with_no_listener_closes_the_connection(vz_env: dict[str, str], tmp_path: Path,
                                                           busybox_rootfs: Path, vz: Vz) -> None:
    port = _free_port()
    env = dict(vz_env, VZ_OCI_DATA_DIR=str(tmp_path / "oci"))
    proc = subprocess.Popen([str(VZ), "oci", "run", "--rm", "-i", "-p", f"{port}:81", "--kernel-profile",
                             "container", str(busybox_rootfs), "--", "sh", "-c", "echo up; read x; echo bye"],
                            env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdin is not None
        assert proc.stdout.readline() == b"up\n"
        assert_closed_at_once(port)
        proc.stdin.write(b"done\n")
        proc.stdin.close()
        assert proc.wait(120) == 0
        assert proc.stdout.read() == b"bye\n"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_publish_port_in_use_fails_before_booting(vz: Vz, busybox_rootfs: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        p = vz("oci", "run", "--rm", "-p", f"{port}:80", "--kernel-profile", "container", str(busybox_rootfs),
               "--", "true")
    assert p.returncode == 71 and "in use" in p.stderr
    assert vz("oci", "ps", "-a", "--json", check=True).stdout.strip() == "[]"
    p = vz("oci", "run", "--rm", "-p", "80/udp", str(busybox_rootfs), "--", "true")
    assert p.returncode == 70, p.stderr


def test_it_without_a_terminal_is_refused(vz_env: dict[str, str], tmp_path: Path, busybox_rootfs: Path) -> None:
    env = dict(vz_env, VZ_OCI_DATA_DIR=str(tmp_path / "oci"))
    p = subprocess.run([str(VZ), "oci", "run", "--rm", "-it", str(busybox_rootfs), "--", "true"], env=env,
                       stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
    assert p.returncode == 72 and "terminal" in p.stderr and len(p.stderr.splitlines()) == 1, p.stderr


def test_exec_it_in_a_running_container(vz: Vz, pty_vz: Callable[..., PtyCli], busybox_rootfs: Path) -> None:
    vz("oci", "create", "--kernel-profile", "container", "--name", "term", str(busybox_rootfs), "--",
       "sh", "-c", "mkfifo /tmp/wait; exec 3<>/tmp/wait; while true; do read -t 1 _ <&3; done", check=True)
    vz("oci", "start", "term", check=True)
    cli = pty_vz("oci", "exec", "-it", "term", "--", "sh", "-c",
                 "tty; stty size; echo ready; read x; stty size; echo got-$x", rows=20, cols=70)
    out = cli.read_until(rb"ready")
    assert re.search(rb"/dev/pts/\d+\r\n20 70\r\n", out), out
    set_size(cli.master, 50, 150)
    time.sleep(2)
    cli.write(b"hi\r")
    out = cli.read_until(rb"got-hi")
    assert b"50 150" in out
    assert cli.wait() == 0
    assert comparable(termios.tcgetattr(cli.slave)) == comparable(cli.before)
    vz("oci", "rm", "-f", "term", check=True)


def test_create_start_publish_is_owned_by_the_supervisor(vz: Vz, busybox_rootfs: Path) -> None:
    port = _free_port()
    vz("oci", "create", "-p", f"{port}:80", "--kernel-profile", "container", "--name", "web",
       str(busybox_rootfs), "--", "sh", "-c",
       "mkdir -p /tmp/www && echo from-web > /tmp/www/i && exec httpd -f -p 127.0.0.1:80 -h /tmp/www", check=True)
    vz("oci", "start", "web", check=True)  # the CLI is gone: the supervisor serves the forward

    def get() -> bytes:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/i", timeout=120) as r:
            return bytes(r.read())

    deadline = time.monotonic() + 120
    while True:  # httpd starts asynchronously after `start` returns
        try:
            body = get()
            break
        except OSError:
            assert time.monotonic() < deadline, "the forward never served"
            time.sleep(1)
    assert body == b"from-web\n"
    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        assert list(pool.map(lambda _: get(), range(20))) == [b"from-web\n"] * 20
    vz("oci", "stop", "-t", "2", "web", check=True)
    with pytest.raises(OSError):
        get()  # the listener went with the supervisor
    vz("oci", "rm", "web", check=True)


def test_create_with_a_port_in_use_leaves_nothing(vz: Vz, busybox_rootfs: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        p = vz("oci", "create", "-p", f"{taken.getsockname()[1]}:80", "--kernel-profile", "container",
               str(busybox_rootfs), "--", "true")
    assert p.returncode == 71 and "in use" in p.stderr, p.stderr
    assert vz("oci", "ps", "-a", "--json", check=True).stdout.strip() == "[]"
