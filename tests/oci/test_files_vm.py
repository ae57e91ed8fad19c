"""`vz oci cp`, `stats`, `inspect`, `run -d` and `logs -f` end to end: real QEMU (TCG), the container
bundle's agent and crun, every command a separate `vz` process (fixtures of test_oci_vm.py)."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from .test_oci_vm import TIMEOUT, VZ, container_bundle, vz, vz_env  # noqa: F401 - fixtures

pytestmark = [pytest.mark.vm, pytest.mark.kernel, pytest.mark.slow]
Vz = Callable[..., subprocess.CompletedProcess[str]]


def _stats(vz: Vz, name: str) -> dict[str, Any]:  # noqa: F811 - the fixture, passed on
    p = vz("oci", "stats", "--no-stream", "--json", "--interval", "0.5", name, check=True)
    (row,) = json.loads(p.stdout)
    return dict(row)


def _tree(root: Path) -> dict[str, str]:
    """relative path → "file:<content>" | "link:<target>" | "dir"."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        out[rel] = (f"link:{os.readlink(p)}" if p.is_symlink() else "dir" if p.is_dir()
                    else f"file:{p.read_text()}")
    return out


def test_cp_round_trips_a_tree_and_never_follows_symlinks(vz: Vz, busybox_rootfs: Path,  # noqa: F811
                                                          tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("host secret\n")
    vol = tmp_path / "vol"
    vol.mkdir()
    src = tmp_path / "src"
    (src / "sub" / "deeper").mkdir(parents=True)
    (src / "a.txt").write_text("a\n")
    (src / "sub" / "deeper" / "b.txt").write_text("b\n")
    os.symlink(str(outside / "secret"), src / "abs-out")  # absolute, pointing outside
    os.symlink("../../../../../../etc", src / "sub" / "rel-out")  # relative, climbing out
    vz("oci", "run", "-d", "--kernel-profile", "container", "--name", "files", "-v", f"{vol}:/data",
       str(busybox_rootfs), "--", "sh", "-c",
       "ln -s / /root/up; mkdir -p /root/box; ln -s /etc/hello.txt /root/box/hello-link; sleep 600", check=True)
    vz("oci", "cp", str(src), "files:/tmp/", check=True)
    p = vz("oci", "exec", "files", "--", "sh", "-c",
           "readlink /tmp/src/abs-out; readlink /tmp/src/sub/rel-out; cat /tmp/src/sub/deeper/b.txt", check=True)
    assert p.stdout.splitlines() == [str(outside / "secret"), "../../../../../../etc", "b"]
    # Into a container symlink that points at "/": it resolves to the container's own root.
    vz("oci", "cp", str(src / "a.txt"), "files:/root/up/a-at-root.txt", check=True)
    assert vz("oci", "exec", "files", "--", "cat", "/a-at-root.txt", check=True).stdout == "a\n"
    # Into a volume: the running container's root sees its mounts.
    vz("oci", "cp", str(src / "a.txt"), "files:/data/", check=True)
    assert (vol / "a.txt").read_text() == "a\n"
    out = tmp_path / "out"
    out.mkdir()
    vz("oci", "cp", "files:/tmp/src", str(out), check=True)
    assert _tree(out / "src") == _tree(src)
    vz("oci", "cp", "files:/root/box", str(out / "box"), check=True)
    assert os.readlink(out / "box" / "hello-link") == "/etc/hello.txt"  # not the image's file content
    assert (outside / "secret").read_text() == "host secret\n" and sorted(os.listdir(outside)) == ["secret"]
    # The whole root: the kernel's own views (/proc, /sys) are copied as empty directories.
    p = vz("oci", "cp", "files:/", str(out / "whole"), check=True)
    assert (out / "whole" / "bin" / "busybox").is_file() and (out / "whole" / "root" / "up").is_symlink()
    assert list((out / "whole" / "proc").iterdir()) == [] and "contents skipped" in p.stderr
    p = vz("oci", "cp", "files:/no/such/file", str(out))
    assert p.returncode == 75 and "no/such" in p.stderr, p.stderr
    p = vz("oci", "cp", "files:/tmp/src", str(out))  # out/src exists: never merged into
    assert p.returncode == 77, p.stderr
    vz("oci", "rm", "-f", "files", check=True)


def test_stats_inspect_and_memory_that_moves(vz: Vz, busybox_rootfs: Path, tmp_path: Path) -> None:  # noqa: F811
    # dd holds a 40 MiB buffer while it blocks on a pipe nobody reads: resident memory of the container.
    script = "while [ ! -e /tmp/go ]; do sleep 1; done; dd if=/dev/zero bs=40M count=1 | sleep 600"
    cid = vz("oci", "run", "-d", "--kernel-profile", "container", "--name", "mem", "--memory", "256",
             str(busybox_rootfs), "--", "sh", "-c", script, check=True).stdout.strip()
    info = json.loads(vz("oci", "inspect", "mem", check=True).stdout)
    assert info["id"] == cid and info["name"] == "mem"
    assert info["state"]["status"] == "running" and info["state"]["supervisor_alive"] is True
    assert info["state"]["memory_mib"] == 256 and info["state"]["profile"] == "container"
    assert info["config"]["process"]["args"] == ["sh", "-c", script]
    assert info["config"]["linux"]["cgroupsPath"] == f"/vz/{cid}"
    before = _stats(vz, "mem")
    assert before["id"] == cid and before["status"] == "running"
    assert before["memory_source"] == "vmrss"  # neither kernel profile has the memory controller
    assert before["vm_rss_bytes"] > 32 << 20 and before["vm_memory_bytes"] == 256 << 20
    assert before["cpu_usage_usec"] is not None and before["pids"] >= 1
    (tmp_path / "go").write_text("")
    vz("oci", "cp", str(tmp_path / "go"), "mem:/tmp/go", check=True)
    deadline = time.monotonic() + TIMEOUT
    after = before
    while time.monotonic() < deadline and after["memory_bytes"] < before["memory_bytes"] + (30 << 20):
        time.sleep(1)
        after = _stats(vz, "mem")
    assert after["memory_bytes"] >= before["memory_bytes"] + (30 << 20), (before, after)
    assert after["cpu_usage_usec"] > before["cpu_usage_usec"]
    assert after["pids"] > before["pids"]  # dd and sleep instead of one shell
    table = vz("oci", "stats", "--no-stream", check=True).stdout
    assert cid in table and "vmrss" in table
    vz("oci", "rm", "-f", "mem", check=True)
    p = vz("oci", "inspect", "mem")
    assert p.returncode == 52, p.stderr


def test_run_detached_and_logs_follow_until_exit(vz: Vz, busybox_rootfs: Path) -> None:  # noqa: F811
    script = "for i in 1 2 3 4 5; do echo line $i; echo err $i >&2; sleep 1; done; exit 3"
    cid = vz("oci", "run", "-d", "--kernel-profile", "container", "--name", "det", str(busybox_rootfs),
             "--", "sh", "-c", script, check=True).stdout.strip()
    assert len(cid) == 12
    p = vz("oci", "logs", "-f", "det", check=True)  # returns by itself once the container exits
    assert p.stdout.splitlines() == [f"line {i}" for i in range(1, 6)]
    assert p.stderr.splitlines() == [f"err {i}" for i in range(1, 6)]
    rows = json.loads(vz("oci", "ps", "-a", "--json", check=True).stdout)
    assert [(r["id"], r["status"], r["exit_code"]) for r in rows] == [(cid, "exited", 3)]
    p = vz("oci", "cp", "det:/etc/hello.txt", "/tmp")
    assert p.returncode == 50 and "gone" in p.stderr, p.stderr  # its VM (and files) ended with it
    vz("oci", "rm", "det", check=True)
