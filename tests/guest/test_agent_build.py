"""Building the agent: versions from vz_linux.version, static binaries per arch, caching, the fuzz run."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from vz_linux.arch import Architecture
from vz_linux.build.agent import agent_source_dir, build_agent, build_fuzzer
from vz_linux.errors import CommandFailedError
from vz_linux.run import run
from vz_linux.version import AGENT_PROTOCOL_REVISION, AGENT_VERSION
from vz_linux.vm import agent_protocol as proto
from vz_linux.vm.agent_client import STDIN_LIMIT

pytestmark = pytest.mark.timeout(600)

HEADER = agent_source_dir() / "protocol.h"


def _c_enum(prefix: str) -> dict[str, int]:
    text = HEADER.read_text()
    return {m[1]: int(m[2], 0) for m in re.finditer(rf"\b{prefix}(\w+) = (0x[0-9a-fA-F]+|\d+)", text)}


def test_header_revision_equals_package_revision() -> None:
    m = re.search(r"#define VZ_AGENT_PROTOCOL_REVISION (\d+)", HEADER.read_text())
    assert m is not None and int(m[1]) == AGENT_PROTOCOL_REVISION


def test_python_constants_match_header() -> None:
    assert _c_enum("VZ_MSG_") == {m.name: m.value for m in proto.Msg}
    header_tags = _c_enum("VZ_T_")
    assert {t.name: t.value for t in proto.Tag}.items() <= header_tags.items()
    assert _c_enum("VZ_E_") == {e.name: e.value for e in proto.ErrorCode}
    assert f"{proto.MAX_PAYLOAD // 1024}u * 1024u" in HEADER.read_text()


def test_transport_and_limit_constants_match_the_agent() -> None:
    main = (agent_source_dir() / "main.c").read_text()
    limits = (agent_source_dir() / "agent.h").read_text()
    assert f"#define VSOCK_PORT {proto.VSOCK_PORT}\n" in main
    assert f'#define SERIAL_NAME "{proto.SERIAL_PORT_NAME}"\n' in main
    assert f"#define FILE_LIMIT ({proto.FILE_LIMIT // 1024}u * 1024u)" in limits
    assert f"#define STDIN_LIMIT ({STDIN_LIMIT >> 20}u << 20)" in limits
    assert f"#define ENTROPY_MIN {proto.ENTROPY_MIN}u " in limits
    assert f"#define ENTROPY_MAX {proto.ENTROPY_MAX}u\n" in limits
    assert f"#define MAX_FWDS {proto.MAX_FWDS}\n" in limits
    assert f"#define FWD_QUEUE_LIMIT ({proto.FWD_QUEUE_LIMIT >> 20}u << 20)" in limits
    assert f"#define VZ_MAX_WINSIZE {proto.MAX_WINSIZE}u\n" in HEADER.read_text()


def test_mismatched_revision_fails_the_build(tmp_path: Path) -> None:
    with pytest.raises(CommandFailedError, match=r"differs from vz_linux\.version"):
        run(["make", "-C", agent_source_dir(), "all", f"O={tmp_path}", f"REVISION={AGENT_PROTOCOL_REVISION + 1}"])
    assert not (tmp_path / "vz-agent").exists()


def test_host_binary_is_static_stripped_and_versioned() -> None:
    binary = build_agent(Architecture.host())
    info = run(["file", binary]).stdout.decode()
    assert "statically linked" in info and "stripped" in info and "not stripped" not in info
    out = run([binary, "--version"]).stdout.decode().strip()
    assert out == f"vz-agent {AGENT_VERSION} protocol {AGENT_PROTOCOL_REVISION}"


def test_arm64_binary_is_static_aarch64() -> None:
    binary = build_agent(Architecture.arm64)
    info = run(["file", binary]).stdout.decode()
    assert "ARM aarch64" in info and "statically linked" in info, info


def test_build_is_cached_and_copied_idempotently(tmp_path: Path) -> None:
    first = build_agent(Architecture.host())
    mtime = first.stat().st_mtime_ns
    assert build_agent(Architecture.host()) == first
    assert first.stat().st_mtime_ns == mtime  # not rebuilt
    copy = build_agent(Architecture.host(), tmp_path / "out")
    assert copy == tmp_path / "out" / "vz-agent" and copy.read_bytes() == first.read_bytes()
    copy_mtime = copy.stat().st_mtime_ns
    assert build_agent(Architecture.host(), tmp_path / "out") == copy
    assert copy.stat().st_mtime_ns == copy_mtime


@pytest.mark.slow
def test_fuzzer_bounded_run_finds_no_crash(tmp_path: Path) -> None:
    fuzzer = build_fuzzer()
    seeds = agent_source_dir() / "fuzz" / "corpus"
    assert len(list(seeds.iterdir())) >= 10
    work = tmp_path / "corpus"
    shutil.copytree(seeds, work)  # new inputs go to the copy, never into the repo
    proc = subprocess.run(
        [str(fuzzer), "-max_total_time=30", "-rss_limit_mb=2048", "-timeout=10", "-print_final_stats=1",
         f"-artifact_prefix={tmp_path}/", str(work)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Done" in proc.stderr
    assert not list(tmp_path.glob("crash-*")) and not list(tmp_path.glob("leak-*"))
    m = re.search(r"stat::number_of_executed_units:\s+(\d+)", proc.stderr)
    assert m is not None and int(m[1]) > 1000  # it really ran
