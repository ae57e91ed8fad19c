"""`vz-agent --probe NAME` on the host (docs/agent.md, "Probes"): the parts that need no guest.

The probes that mount, make devices or start nfsd are proved in real guests (tests/vm/test_verify_boot.py,
tests/vm/test_arm64.py). Here: the dispatcher knows every probe the registry expects, the
unprivileged probes do their thing on this kernel, failures are one reason line with a nonzero exit,
and nested_virt (whose developer kernel is not built here) agrees with what Python sees of /dev/kvm.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
from pathlib import Path

from vz_linux.capabilities import REGISTRY

KVM_GET_API_VERSION = 0xAE00
KVM_CREATE_VM = 0xAE01


def _probe(agent: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(agent), "--probe", *args], capture_output=True, text=True, timeout=60)


def test_unknown_probe_lists_every_registry_agent_probe(agent_binary: Path) -> None:
    p = _probe(agent_binary, "no-such-probe")
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr.startswith("vz-agent: unknown probe no-such-probe; known:")
    known = p.stderr.split("known:", 1)[1].split()
    wanted = {cap.value for cap, spec in REGISTRY.items() if spec.agent_probe}
    assert wanted <= set(known), sorted(wanted - set(known))
    # Every capability the host runs through the agent has no shell snippet to fall back on.
    assert all(not spec.probe for spec in REGISTRY.values() if spec.agent_probe)
    # The rest have a shell snippet, or are proven by a boot of their own (ext4_root: vm/root_probe.py).
    assert all(spec.probe or spec.boot_probe for spec in REGISTRY.values() if not spec.agent_probe)
    assert _probe(agent_binary).returncode == 2  # no name at all


def test_io_uring_and_seccomp_do_the_thing(agent_binary: Path) -> None:
    io = _probe(agent_binary, "io_uring")
    assert io.returncode == 0, io.stderr
    assert io.stdout.startswith("io_uring: NOP submitted and completed (user_data 0x767a2d6e6f70, res 0;")
    assert len(io.stdout.splitlines()) == 1 and io.stderr == ""
    sc = _probe(agent_binary, "seccomp")
    assert sc.returncode == 0, sc.stderr
    assert "getppid denied with EPERM" in sc.stdout and "parent unaffected" in sc.stdout


def test_failures_are_one_reason_line(agent_binary: Path, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("abc\n")
    # The right token on a file system that is not virtiofs is still a failure.
    p = _probe(agent_binary, "virtiofs", str(token), "abc")
    assert p.returncode == 1 and p.stdout == ""
    assert "not virtiofs" in p.stderr and len(p.stderr.splitlines()) == 1
    missing = _probe(agent_binary, "virtiofs", str(tmp_path / "absent"), "abc")
    assert missing.returncode == 1 and "No such file or directory" in missing.stderr
    assert _probe(agent_binary, "virtiofs", str(token)).returncode == 2  # usage
    btrfs = _probe(agent_binary, "btrfs_snapshots")
    assert btrfs.returncode == 2 and "usage" in btrfs.stderr


def _python_kvm_verdict() -> tuple[bool, str]:
    try:
        fd = os.open("/dev/kvm", os.O_RDWR)
    except OSError as e:
        return False, f"open /dev/kvm: {e.strerror}"
    try:
        api = fcntl.ioctl(fd, KVM_GET_API_VERSION, 0)
        if api != 12:
            return False, f"KVM_GET_API_VERSION = {api}"
        try:
            os.close(fcntl.ioctl(fd, KVM_CREATE_VM, 0))
        except OSError as e:
            return False, f"KVM_CREATE_VM: {e.strerror}"
        return True, "/dev/kvm API 12, KVM_CREATE_VM ok"
    finally:
        os.close(fd)


def test_nested_virt_agrees_with_the_kernel(agent_binary: Path) -> None:
    # The developer kernel (the one profile with nested_virt) is not compiled here: the probe's C
    # is checked against this host's own /dev/kvm, whatever that offers.
    ok, what = _python_kvm_verdict()
    p = _probe(agent_binary, "nested_virt")
    assert (p.returncode == 0) == ok, (p.stdout, p.stderr, what)
    line = p.stdout if ok else p.stderr
    assert what in line, (line, what)
    flags = next((x for x in Path("/proc/cpuinfo").read_text().splitlines() if x.startswith("flags")), "")
    offered = "svm (AMD-V)" if " svm" in flags else "vmx (VT-x)" if " vmx" in flags else "neither svm nor vmx"
    assert f"guest CPU offers {offered}" in line
