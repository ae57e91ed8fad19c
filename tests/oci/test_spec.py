"""config.json generation and the -v/-e syntax."""

from __future__ import annotations

from pathlib import Path

import pytest

from vz_linux.errors import InvalidConfigError, VolumeError
from vz_linux.oci.spec import ProcessSpec, Volume, merge_env, namespaces_for, parse_env, runtime_spec
from vz_linux.profiles import KernelProfile


def test_container_profile_asks_only_for_mount_and_network_namespaces() -> None:
    assert namespaces_for(KernelProfile.container, network=False) == ("mount", "network")
    assert namespaces_for(KernelProfile.container, network=True) == ("mount",)
    assert "pid" in namespaces_for(KernelProfile.developer, network=False)


def test_runtime_spec_carries_process_root_mounts_and_volumes(tmp_path: Path) -> None:
    vol = Volume(tmp_path, "/data", read_only=True)
    spec = runtime_spec(ProcessSpec(("/bin/sh", "-c", "x"), ("PATH=/bin", "A=1"), "/w"),
                        root_path="/run/r", namespaces=("mount", "network"), volumes=[("/mnt/vz-mount-0", vol)])
    p = spec["process"]
    assert p["args"] == ["/bin/sh", "-c", "x"] and p["env"] == ["PATH=/bin", "A=1"] and p["cwd"] == "/w"
    assert p["terminal"] is False
    assert spec["root"]["path"] == "/run/r"
    assert [n["type"] for n in spec["linux"]["namespaces"]] == ["mount", "network"]
    assert "hostname" not in spec  # no UTS namespace on the container kernel: crun would refuse it
    bind = [m for m in spec["mounts"] if m["type"] == "bind"]
    assert bind == [
        # the VM's devpts, for -t (docs/oci.md, "Terminals and ports")
        {"destination": "/dev/pts", "type": "bind", "source": "/dev/pts", "options": ["rbind", "nosuid", "noexec"]},
        {"destination": "/data", "type": "bind", "source": "/mnt/vz-mount-0", "options": ["rbind", "ro"]},
    ]


def test_volume_parsing(tmp_path: Path) -> None:
    v = Volume.parse(f"{tmp_path}:/data:ro")
    assert (v.source, v.destination, v.read_only) == (tmp_path.resolve(), "/data", True)
    assert Volume.parse(f"{tmp_path}:/d").read_only is False
    with pytest.raises(VolumeError, match="does not exist"):
        Volume.parse(f"{tmp_path}/missing:/d")
    with pytest.raises(VolumeError, match="must be absolute"):
        Volume.parse(f"{tmp_path}:rel")
    with pytest.raises(VolumeError, match="HOST:GUEST"):
        Volume.parse(f"{tmp_path}:/d:rx")
    (tmp_path / "file").write_text("")
    with pytest.raises(VolumeError, match="not a directory"):
        Volume.parse(f"{tmp_path}/file:/d")


def test_env() -> None:
    assert merge_env(("PATH=/bin", "A=1"), ("A=2", "B=3")) == ("PATH=/bin", "A=2", "B=3")
    assert parse_env(["X=a=b", "E="]) == ("X=a=b", "E=")
    with pytest.raises(InvalidConfigError):
        parse_env(["NOEQUALS"])


def test_empty_command_is_refused() -> None:
    with pytest.raises(InvalidConfigError, match="no command"):
        ProcessSpec((), ())
