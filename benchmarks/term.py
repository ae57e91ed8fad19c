#!/usr/bin/env python3
"""Terminal and port-forward figures on a real guest (one VM, A/B in one run).

Usage: .venv/bin/python benchmarks/term.py --bundle-dir DIR [--keys N] [--mib M] [--figures FILE]

* keystroke_echo — one byte written to a TTY exec (``cat`` on the guest terminal) until its echo
  comes back: STDIN → the guest pty's line discipline → OUTPUT, over the agent channel;
* keystroke_echo_cli — the same end to end through ``vz-linux run -it -- cat`` on a host pty: the
  host terminal in raw mode → the CLI's stdin thread → the agent → the guest pty → the CLI → the
  host terminal (what a user typing feels);
* forward_download_mibps — M MiB from ``busybox httpd`` in the guest (a tmpfs file) to the host
  through a ``-p`` forward (:class:`PortForwarder`), read by a plain host socket;
* virtiofs_copy_mibps — the same file copied by the guest onto a virtiofs share of a host directory
  (``cp`` → FUSE → virtiofsd → host file): the other way bytes get from the guest to the host;
* exec_stdout_mibps — the same file as an exec's stdout (``cat``), for scale.

Prints one named figure per line (docs/benchmarks.md); ``--figures FILE`` also records them as JSON lines.
"""

from __future__ import annotations

import argparse
import os
import select
import socket
import subprocess
import sys
import tempfile
import termios
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks.figures

from benchmarks.figures import Figures
from vz_linux.vm.agent_client import AgentClient
from vz_linux.vm.linux_vm import LinuxVm, VmConfig, VmShare
from vz_linux.vm.port_forward import ForwardSpec, PortForwarder

_GUEST_PORT = 8080


def keystrokes(agent: AgentClient, n: int) -> list[float]:
    """Milliseconds from writing one byte to a TTY exec until its echo arrives."""
    out: list[float] = []
    with agent.exec_stream(["cat"], tty=True, close_stdin=False, timeout=600) as s:
        it = iter(s)
        for i in range(n):
            key = bytes([ord("a") + i % 26])
            t0 = time.perf_counter()
            s.write_stdin(key)
            got = b""
            while key not in got:
                got += next(it).data
            out.append((time.perf_counter() - t0) * 1000)
    return out


def keystrokes_cli(bundle_dir: Path, n: int) -> list[float]:
    """Like :func:`keystrokes`, through the real CLI on a host pseudo-terminal."""
    master, slave = os.openpty()
    argv = ["setsid", "--ctty", sys.executable, "-c", "from vz_linux.cli.main import main; main()", "run",
            "--bundle-dir", str(bundle_dir), "--cold", "-t", "-i", "--", "sh", "-c", "echo ready; exec cat"]
    proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, close_fds=True)
    out: list[float] = []
    try:
        _pty_wait(master, b"ready", 300)
        if termios.tcgetattr(slave)[3] & termios.ECHO:  # else the host's own echo would be timed
            raise SystemExit("the CLI did not put the terminal in raw mode")
        for i in range(n):
            key = bytes([ord("a") + i % 26])
            t0 = time.perf_counter()
            os.write(master, key)
            _pty_wait(master, key, 60)
            out.append((time.perf_counter() - t0) * 1000)
        os.write(master, b"\x03")  # raw mode: ^C reaches the guest terminal and ends cat
        proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
        os.close(slave)
    return out


def _pty_wait(fd: int, want: bytes, timeout: float) -> None:
    got, deadline = b"", time.monotonic() + timeout
    while want not in got:
        left = deadline - time.monotonic()
        if left <= 0:
            raise SystemExit(f"no {want!r} from the CLI within {timeout:.0f}s: {got[-500:]!r}")
        if select.select([fd], [], [], min(left, 1.0))[0]:
            got += os.read(fd, 4096)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def download(agent: AgentClient, size: int) -> float:
    """Seconds to fetch /f (``size`` bytes) from the guest's httpd through a forward."""
    spec = ForwardSpec("127.0.0.1", _free_port(), _GUEST_PORT)
    with PortForwarder((spec,)) as fwd:
        fwd.start(agent)
        t0 = time.perf_counter()
        got = 0
        with socket.create_connection(("127.0.0.1", spec.host_port), timeout=600) as s:
            s.sendall(b"GET /f HTTP/1.0\r\n\r\n")
            while data := s.recv(1 << 20):
                got += len(data)
        elapsed = time.perf_counter() - t0
    if got < size:
        raise SystemExit(f"download got {got} bytes, wanted at least {size}")
    return elapsed


def _guest(agent: AgentClient, script: str) -> float:
    t0 = time.perf_counter()
    r = agent.exec_collect(["sh", "-c", script], timeout=600, max_output=1 << 20)
    if not r.ok:
        raise SystemExit(f"guest `{script}` failed: {r.describe()}: {r.stderr[-500:]!r}")
    return time.perf_counter() - t0


def measure(figures: Figures, bundle_dir: Path, keys: int, mib: int) -> None:
    figures.put_samples("keystroke_echo_cli", keystrokes_cli(bundle_dir, keys))
    with tempfile.TemporaryDirectory(prefix="vz-term-bench-") as tmp:
        share = VmShare("vz-mount-0", Path(tmp))
        cfg = VmConfig.from_bundle(bundle_dir, memory_mib=256 + 2 * mib, shares=(share,),
                                   cmdline_extra=("vz.mount.0=/mnt/share",))
        with LinuxVm(cfg) as vm:
            vm.wait_for_agent(300)
            agent = vm.agent
            figures.put_samples("keystroke_echo", keystrokes(agent, keys))
            _guest(agent, f"dd if=/dev/urandom of=/tmp/f bs=1M count={mib} 2>/dev/null; mkdir -p /tmp/www; "
                          f"ln -sf /tmp/f /tmp/www/f; busybox httpd -p 127.0.0.1:{_GUEST_PORT} -h /tmp/www")
            size = mib << 20
            figures.put("forward_download_mibps", mib / download(agent, size), "MiB/s")
            figures.put("virtiofs_copy_mibps", mib / _guest(agent, "cp /tmp/f /mnt/share/f && sync"), "MiB/s")
            if (Path(tmp) / "f").stat().st_size != size:
                raise SystemExit("virtiofs copy is incomplete")
            t0 = time.perf_counter()
            r = agent.exec_collect(["cat", "/tmp/f"], timeout=600, max_output=size + 1)
            figures.put("exec_stdout_mibps", mib / (time.perf_counter() - t0), "MiB/s")
            if len(r.stdout) != size:
                raise SystemExit("exec stdout is incomplete")


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--bundle-dir", type=Path, required=True)
    ap.add_argument("--keys", type=int, default=200)
    ap.add_argument("--mib", type=int, default=100)
    ap.add_argument("--figures", type=Path, help="also append the figures to this JSON-lines file")
    args = ap.parse_args()
    figures = Figures()
    print(f"load {os.getloadavg()[0]:.2f}")
    measure(figures, args.bundle_dir, args.keys, args.mib)
    if args.figures:
        figures.write_jsonl(args.figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
