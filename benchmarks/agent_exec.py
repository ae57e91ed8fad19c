#!/usr/bin/env python3
"""Guest agent figures: binary size per arch and exec round-trip latency over the Unix transport.

Usage: .venv/bin/python benchmarks/agent_exec.py [--iterations N]

Builds (or takes from the cache) the static agent for x86_64 and arm64, starts the host's one with
``--listen unix:``, and times, in one run on the same machine and load:

* ping_rtt       — a PING round trip (protocol + client floor);
* exec_true_rtt  — ``exec_collect(["true"])``: EXEC → STARTED → EXIT (spawn + exec + reap);
* exec_true_rtt_raw — the same on a bare blocking socket without the client's reader thread;
* host_spawn_true — ``subprocess.run(["true"])`` from Python, the same work without the agent, for scale.

Prints one named figure per line (docs/benchmarks.md); ``--figures FILE`` also records them as JSON lines.
"""

from __future__ import annotations

import argparse
import gzip
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks.figures

from benchmarks.figures import Figures, time_ms
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


def measure(figures: Figures, iterations: int) -> None:
    """Agent sizes per arch, then the round trips against the host's agent on a Unix socket."""
    for arch in Architecture:
        binary = build_agent(arch)
        figures.put(f"agent_size_{arch.value}", binary.stat().st_size, "bytes")
        figures.put(f"agent_size_gzip_{arch.value}", len(gzip.compress(binary.read_bytes(), compresslevel=9)),
                    "bytes")
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
                figures.put_samples("ping_rtt", time_ms(client.ping, iterations))
                figures.put_samples("exec_true_rtt", time_ms(lambda: _exec_true(client), iterations))
                figures.put_samples("exec_true_rtt_raw", time_ms(_raw_exec(sock), iterations))
                figures.put_samples("host_spawn_true", time_ms(lambda: subprocess.run(["true"], check=True),
                                                               max(100, iterations // 5)))


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--iterations", type=int, default=1000)
    ap.add_argument("--figures", type=Path, help="also append the figures to this JSON-lines file")
    args = ap.parse_args()
    figures = Figures()
    print(f"load {os.getloadavg()[0]:.2f}")
    measure(figures, args.iterations)
    if args.figures:
        figures.write_jsonl(args.figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
