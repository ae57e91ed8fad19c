#!/usr/bin/env python3
"""Guest agent figures: binary size per arch and exec round-trip latency over the Unix transport.

Usage: .venv/bin/python benchmarks/agent_exec.py [--iterations N]

Builds (or takes from the cache) the static agent for x86_64 and arm64, starts the host's one with
``--listen unix:``, and times, in one run on the same machine and load:

* ping_rtt       — a PING round trip (protocol + client floor);
* exec_true_rtt  — ``exec_collect(["true"])``: EXEC → STARTED → EXIT (spawn + exec + reap);
* exec_true_rtt_raw — the same on a bare blocking socket without the client's reader thread;
* host_spawn_true — ``subprocess.run(["true"])`` from Python, the same work without the agent, for scale.

Prints one named figure per line with its unit.
"""

from __future__ import annotations

import argparse
import gzip
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from _timing import report, time_ms  # benchmarks/ is sys.path[0] when run as a script

from vz_linux.arch import Architecture
from vz_linux.build.agent import build_agent
from vz_linux.run import spawn
from vz_linux.vm.agent_client import AgentClient
from vz_linux.vm.agent_protocol import FrameReader, Msg, Tag, encode_frame


def _exec_true(client: AgentClient) -> None:
    r = client.exec_collect(["true"])
    if r.exit_code != 0:
        raise SystemExit(f"true failed: {r.describe()}")


def _raw_exec(path: Path) -> Callable[[], None]:
    """EXEC `true` on a plain blocking socket, no client thread: the agent's own share of the RTT."""
    raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    raw.connect(str(path))
    reader = FrameReader()
    ids = iter(range(1, 1 << 32))

    def once() -> None:
        rid = next(ids)
        raw.sendall(encode_frame(Msg.EXEC, rid, [(Tag.ARGV, "true"), (Tag.EOF, True)]))
        while True:
            for f in reader.feed(raw.recv(65536)):
                if f.msg == Msg.EXIT and f.request_id == rid:
                    return

    return once


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--iterations", type=int, default=1000)
    args = ap.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cpus, load {os.getloadavg()[0]:.2f}, "
          f"python {platform.python_version()}")
    for arch in Architecture:
        binary = build_agent(arch)
        size = binary.stat().st_size
        packed = len(gzip.compress(binary.read_bytes(), compresslevel=9))
        print(f"agent_size_{arch.value}: {size} bytes ({size / 1024:.0f} KiB), gzip -9 {packed / 1024:.0f} KiB")
    host = build_agent(Architecture.host())
    with tempfile.TemporaryDirectory(prefix="vz-agent-bench-") as tmp:
        sock = Path(tmp) / "agent.sock"
        with spawn([host, "--listen", f"unix:{sock}"]):
            deadline = time.monotonic() + 10
            while not sock.exists():
                if time.monotonic() > deadline:
                    raise SystemExit("agent did not start")
                time.sleep(0.01)
            with AgentClient.connect_unix(sock) as client:
                for _ in range(20):  # warm up caches and the page cache for `true`
                    _exec_true(client)
                report("ping_rtt", time_ms(client.ping, args.iterations))
                report("exec_true_rtt", time_ms(lambda: _exec_true(client), args.iterations))
                report("exec_true_rtt_raw", time_ms(_raw_exec(sock), args.iterations))
                report("host_spawn_true", time_ms(lambda: subprocess.run(["true"], check=True),
                                                 max(100, args.iterations // 5)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
