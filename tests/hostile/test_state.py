"""Crafted container records (docs/security.md, "Hostile inputs"): ids come from directory names,
a state.json that lies about its id or carries ill-typed values is refused, a pid written into a
record is never signalled, and records holding `-e` values are private.

The records are written by hand, as a guest writing through the container's share (or anyone
else who can write the data dir) would write them; everything runs through the real `vz` CLI.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest

from vz_linux.errors import ContainerStateError
from vz_linux.oci import supervisor
from vz_linux.oci.config import RuntimeConfig
from vz_linux.oci.container import ContainerRequest, prepare_container
from vz_linux.oci.state import ContainerStore, Status, process_start_time
from vz_linux.profiles import KernelProfile

from .conftest import CliRunner, plant, record

GOOD, EVIL, LIAR = "aaaaaaaaaaaa", "bbbbbbbbbbbb", "cccccccccccc"


def test_rm_stop_ps_never_act_outside_the_data_dir(data_dir: Path, vz: CliRunner) -> None:
    victim = data_dir / "victim"
    victim.mkdir()
    (victim / "precious").write_text("keep me\n")
    good = plant(data_dir, GOOD, record(GOOD, name="good"))
    good_state = (good / "state.json").read_bytes()
    plant(data_dir, EVIL, record("../victim", name="evil"))  # a path instead of its own id
    plant(data_dir, LIAR, record(GOOD, name="liar"))  # another container's id

    for args in (("rm", "-f", "evil"), ("rm", "-f", EVIL), ("stop", EVIL),
                 ("rm", "-f", "liar"), ("rm", "-f", LIAR), ("stop", LIAR)):
        proc = vz("oci", *args)
        assert proc.returncode == 52, (args, proc.stdout, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "refused" in vz("oci", "rm", "-f", EVIL).stderr

    assert (victim / "precious").read_text() == "keep me\n"
    assert (good / "state.json").read_bytes() == good_state
    assert (data_dir / "containers" / EVIL).is_dir() and (data_dir / "containers" / LIAR).is_dir()
    ps = vz("oci", "ps", "-a", "--json")
    assert ps.returncode == 0, ps.stderr
    assert [row["id"] for row in json.loads(ps.stdout)] == [GOOD]
    assert vz("oci", "rm", "good").returncode == 0
    assert not good.exists() and (victim / "precious").exists()


def test_a_pid_written_into_state_json_is_never_signalled(data_dir: Path, vz: CliRunner) -> None:
    """A record claiming a live process (pid and start time right) as its supervisor: `stop` and
    `rm -f` must not signal it, since it is not this container's supervisor."""
    decoy = subprocess.Popen(["sleep", "600"], start_new_session=True)
    try:
        start = process_start_time(decoy.pid)
        plant(data_dir, GOOD, record(GOOD, name="pid", status="running", exit_code=None,
                                     supervisor_pid=decoy.pid, supervisor_start=start))
        assert vz("oci", "stop", "-t", "0", "pid").returncode == 0
        assert vz("oci", "rm", "-f", "pid").returncode == 0
        assert decoy.poll() is None, "vz signalled a process named only by state.json"
        assert not (data_dir / "containers" / GOOD).exists()
    finally:
        decoy.kill()
        decoy.wait()


def _without(key: str) -> dict[str, Any]:
    body = record(GOOD)
    del body[key]
    return body


CRAFTED: dict[str, dict[str, Any] | str] = {
    "not-json": "{not json",
    "a-list": "[1, 2]",
    "args-a-string": record(GOOD, args="rm -rf /"),
    "env-not-strings": record(GOOD, env=[1, 2]),
    "cpus-a-string": record(GOOD, cpus="2"),
    "pid-zero": record(GOOD, supervisor_pid=0, supervisor_start=0),  # killpg(0) is our own group
    "pid-negative": record(GOOD, supervisor_pid=-1, supervisor_start=0),
    "pid-a-string": record(GOOD, supervisor_pid="123"),
    "status-unknown": record(GOOD, status="bogus"),
    "created-a-number": record(GOOD, created=5),
    "volume-source-a-number": record(GOOD, volumes=[{"source": 1, "destination": "/x", "read_only": False}]),
    "volume-relative": record(GOOD, volumes=[{"source": "/x", "destination": "x", "read_only": False}]),
    "args-missing": _without("args"),
    "port-out-of-range": record(GOOD, ports=[{"host_ip": "127.0.0.1", "host_port": 70000, "guest_port": 80}]),
    "port-host-not-an-ip": record(GOOD, ports=[{"host_ip": "evil.example", "host_port": 8080, "guest_port": 80}]),
    "port-a-string": record(GOOD, ports=[{"host_ip": "127.0.0.1", "host_port": "8080", "guest_port": 80}]),
}


@pytest.mark.parametrize("body", CRAFTED.values(), ids=CRAFTED.keys())
def test_crafted_state_json_is_a_state_error(data_dir: Path, vz: CliRunner, body: dict[str, Any] | str) -> None:
    plant(data_dir, GOOD, body)
    plant(data_dir, LIAR, record(LIAR, name="fine"))
    with pytest.raises(ContainerStateError, match="corrupt"):
        ContainerStore(data_dir / "containers").read(GOOD)
    proc = vz("oci", "rm", "-f", GOOD)
    assert proc.returncode == 52, proc.stderr
    assert "corrupt" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    ps = vz("oci", "ps", "-a", "--json")  # the broken record does not break the others' listing
    assert ps.returncode == 0, ps.stderr
    assert [row["id"] for row in json.loads(ps.stdout)] == [LIAR]


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


@pytest.mark.kernel
def test_container_records_are_private(tmp_path: Path, built_bundle: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """config.json and state.json hold the -e values: 0600 in a 0700 dir; the socket is 0600."""
    for name in list(os.environ):
        if name.startswith(("VZ_LINUX_", "VZ_OCI_")) and name != "VZ_LINUX_CACHE_DIR":
            monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("VZ_LINUX_CONTAINER_BUNDLE_DIR", str(built_bundle(KernelProfile.container)))
    rootfs = tmp_path / "rootfs"
    (rootfs / "bin").mkdir(parents=True)
    (rootfs / "bin" / "true").write_text("#!/bin/sh\n")
    (rootfs / "bin" / "true").chmod(0o755)
    old_umask = os.umask(0o022)  # the usual one: it must not decide these modes
    try:
        cfg = RuntimeConfig(linux_profile=KernelProfile.container, data_dir=tmp_path / "oci")
        state, _ = prepare_container(cfg, ContainerRequest(image=str(rootfs), command=("true",),
                                                           env=("SECRET=s3cr3t",)))
        store = ContainerStore(cfg.containers_dir)
        cdir = store.dir(state.id)
        assert "s3cr3t" in (cdir / "config.json").read_text()
        assert (_mode(cfg.containers_dir), _mode(cdir)) == (0o700, 0o700)
        assert (_mode(cdir / "config.json"), _mode(cdir / "state.json")) == (0o600, 0o600)
        store.update(state.id, status=Status.exited)  # rewritten: still private
        assert _mode(cdir / "state.json") == 0o600
        listener = supervisor.listen(cdir / "supervisor.sock")
        try:
            assert stat.S_ISSOCK((cdir / "supervisor.sock").lstat().st_mode)
            assert _mode(cdir / "supervisor.sock") == 0o600
        finally:
            listener.close()
    finally:
        os.umask(old_umask)
