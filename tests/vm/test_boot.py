"""Boot the container x86_64 bundle (TCG) and use it through the agent and the CLIs."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from vz_linux.errors import GuestBootError
from vz_linux.vm.linux_vm import LinuxVm, VmConfig

pytestmark = [pytest.mark.vm, pytest.mark.kernel, pytest.mark.slow]


def _cli(prog: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    mod = {"vz-linux": "vz_linux.cli.main", "vz-linux-bench": "vz_linux.cli.bench"}[prog]
    return subprocess.run([sys.executable, "-c", f"from {mod} import main; main()", *args],
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def vm(container_bundle: Path) -> Iterator[LinuxVm]:
    with LinuxVm(VmConfig.from_bundle(container_bundle, accel="tcg")) as v:
        v.wait_for_agent(120)
        yield v


def test_agent_ready_and_kernel_release(vm: LinuxVm) -> None:
    assert vm.times is not None and vm.times.hello.protocol_revision >= 1
    r = vm.exec_collect(["uname", "-r"])
    assert r.exit_code == 0 and r.stdout.decode().strip().endswith("-vz-container")
    assert vm.accel is not None and vm.accel.accel.value == "tcg"


@pytest.mark.parametrize("code", [0, 1, 42, 255])
def test_exit_codes_round_trip(vm: LinuxVm, code: int) -> None:
    assert vm.exec_collect(["sh", "-c", f"echo out; echo err >&2; exit {code}"]).exit_code == code


def test_streaming_exec(vm: LinuxVm) -> None:
    chunks = list(vm.exec_stream(["sh", "-c", "for i in 1 2 3; do echo line$i; done"]))
    assert b"".join(c.data for c in chunks) == b"line1\nline2\nline3\n"


def test_vz_linux_run_streams_and_exits_with_the_code(container_bundle: Path) -> None:
    p = _cli("vz-linux", "run", "--bundle-dir", str(container_bundle), "--accel", "tcg", "--",
             "sh", "-c", "echo hello-from-guest; echo oops >&2; exit 7")
    assert p.returncode == 7, p.stderr
    assert p.stdout == "hello-from-guest\n" and "oops" in p.stderr
    # A command killed by signal N exits 128+N, as in a shell (docs/vm.md).
    p = _cli("vz-linux", "run", "--bundle-dir", str(container_bundle), "--accel", "tcg", "--",
             "sh", "-c", "echo before; kill -TERM $$; echo after")
    assert (p.returncode, p.stdout) == (128 + 15, "before\n"), p.stderr


DMESG_LINE = re.compile(r"^\[\s*\d+\.\d+\] ")


def test_bench_compare_two_bundles_with_http_smoke(container_bundle: Path, container_bundle_arm64: Path,
                                                   http_server: tuple[str, bytes], tmp_path: Path) -> None:
    """`vz-linux-bench --compare` end to end: x86_64 and arm64 container bundles, interleaved, each
    boot fetching from a real HTTP server on the host and capturing its dmesg tail."""
    url, body = http_server
    out = tmp_path / "bench.json"
    a, b = str(container_bundle), str(container_bundle_arm64)
    p = _cli("vz-linux-bench", "--bundle-dir", a, "--compare", b, "--iterations", "1", "--timeout-secs", "180",
             "--accel", "tcg", "--http-smoke-url", url, "--guest-logs", "--json", str(out), timeout=900)
    assert p.returncode == 0, p.stderr
    data = json.loads(out.read_text())
    samples = data["samples"]
    assert [s["label"] for s in samples] == [a, b]  # A then B
    for s in samples:
        assert s["http_smoke"] == body.decode()
        assert s["kernel_release"].endswith("-vz-container")
        log_lines = s["guest_log"].splitlines()
        assert 10 <= len(log_lines) <= 120 and all(DMESG_LINE.match(line) for line in log_lines), s["guest_log"]
        # The phase split covers the whole boot: vmm + kernel + init + agent = spawn -> agent ready.
        phases = [s["phases"][name] for name in ("vmm", "kernel", "init", "agent")]
        assert all(v is not None and v >= 0 for v in phases), s["phases"]
        assert sum(phases) == pytest.approx(s["total_s"], abs=1e-6)
    summ = data["summary"]
    assert (summ[a]["total_s"]["n"], summ[b]["total_s"]["n"]) == (1, 1)
    ratio = summ[a]["total_s"]["median"] / summ[b]["total_s"]["median"]
    assert summ["ratio_of_medians"] == {"numerator": a, "denominator": b, "value": ratio}
    assert f"ratio of medians {a} / {b}: {ratio:.3f}" in " ".join(p.stdout.split())  # (rich wraps long lines)


def test_rootfs_dir_boots_into_the_share(container_bundle: Path, host_busybox: Path, tmp_path: Path) -> None:
    root = tmp_path / "rootfs"
    (root / "bin").mkdir(parents=True)
    for d in ("etc", "proc", "sys", "dev", "tmp", "run", "mnt"):
        (root / d).mkdir()
    (root / "bin" / "busybox").write_bytes(host_busybox.read_bytes())
    (root / "bin" / "busybox").chmod(0o755)
    (root / "bin" / "sh").symlink_to("busybox")
    (root / "bin" / "cat").symlink_to("busybox")
    (root / "etc" / "vz-marker").write_text("rootfs marker 51d2\n")
    p = _cli("vz-linux", "run", "--bundle-dir", str(container_bundle), "--accel", "tcg",
             "--rootfs-dir", str(root), "--", "sh", "-c", "cat /etc/vz-marker; grep ' / ' /proc/mounts")
    assert p.returncode == 0, p.stderr
    marker, mounts = p.stdout.split("\n", 1)
    assert marker == "rootfs marker 51d2"
    assert "overlay" in mounts  # the overlay over the virtiofs share is the root


def test_panic_is_reported_with_its_log(container_bundle: Path, tiny_initramfs) -> None:
    # /init exits at once: the kernel panics ("Attempted to kill init!"), panic=-1 makes QEMU exit.
    initramfs = tiny_initramfs("#!/bin/sh\nexit 3\n")
    cfg = VmConfig(kernel=container_bundle / "vmlinux", initramfs=initramfs, accel="tcg")
    with LinuxVm(cfg) as v, pytest.raises(GuestBootError) as info:
        v.wait_for_agent(120)
    msg = str(info.value)
    assert "Kernel panic" in msg and "serial log tail" in msg and "kill init" in msg


def test_missing_init_panics_too(container_bundle: Path, tiny_initramfs) -> None:
    cfg = VmConfig(kernel=container_bundle / "vmlinux", initramfs=tiny_initramfs(None), accel="tcg")
    with LinuxVm(cfg) as v, pytest.raises(GuestBootError, match="Kernel panic"):
        v.wait_for_agent(120)


@pytest.mark.parametrize("prog", ["vz-linux", "vz-linux-bench"])
def test_cli_bad_bundle_is_one_line(prog: str, tmp_path: Path) -> None:
    # An empty dir is no bundle: MissingArtifactsError, exit 10 (docs/selection.md), one line and
    # nothing else on stderr (vz-linux-bench used to print an `accelerator:` line before it).
    args = ("run", "--bundle-dir", str(tmp_path), "--accel", "tcg", "--", "true") if prog == "vz-linux" else \
        ("--bundle-dir", str(tmp_path), "--accel", "tcg", "--iterations", "1")
    p = _cli(prog, *args)
    assert p.returncode == 10, p.stderr
    [line] = p.stderr.strip().splitlines()
    assert line.startswith(f"{prog}: error: ") and "version.json" in line, p.stderr
    assert p.stdout == ""
