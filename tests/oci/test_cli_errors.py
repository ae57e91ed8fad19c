"""Bad input to `vz oci …`: one clear line, a distinct exit code, no traceback, nothing half-written."""

from __future__ import annotations

from pathlib import Path

import pytest

from vz_linux.cli.vz import main as vz_main

# Exit codes as docs/oci.md and docs/selection.md state them: literal numbers, so changing a
# class's code without changing the documented contract turns these tests red.
IMAGE, CONTAINER_STATE, VOLUME, MISSING_ARTIFACTS, INVALID_CONFIG, NOT_FOUND = 51, 52, 53, 10, 18, 127


def _vz(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """Run `vz ARGS` in-process; a failure must be exactly one line on stderr, never a traceback."""
    with pytest.raises(SystemExit) as e:
        vz_main(args)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    code = e.value.code
    assert isinstance(code, int)
    if code != 0:
        assert len(err.strip().splitlines()) == 1 and err.startswith("vz: error: "), err
    return code, err


def _no_containers(home: Path) -> None:
    d = home / ".vz" / "oci" / "containers"
    assert not d.exists() or not any(d.iterdir()), "a failed run left container state behind"


def test_missing_image(home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _vz(["oci", "run", "--kernel-profile", "container", str(tmp_path / "nope"), "--", "true"], capsys)
    assert code == IMAGE
    assert err.startswith("vz: error: image ") and "does not exist" in err
    _no_containers(home)


def test_not_a_rootfs(home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "notroot").mkdir()
    code, err = _vz(["oci", "run", str(tmp_path / "notroot"), "--", "true"], capsys)
    assert code == IMAGE and "neither an OCI image layout nor" not in err
    assert "nor a root filesystem" in err


def test_command_not_in_image_is_127_before_any_boot(home: Path, busybox_rootfs: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _vz(["oci", "run", "--kernel-profile", "container", str(busybox_rootfs), "--", "no-such-cmd"], capsys)
    assert code == NOT_FOUND
    assert "no-such-cmd: command not found" in err
    _no_containers(home)


def test_missing_volume_source(home: Path, busybox_rootfs: Path, tmp_path: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _vz(["oci", "run", "-v", f"{tmp_path}/absent:/data", str(busybox_rootfs), "--", "true"], capsys)
    assert code == VOLUME
    assert "absent does not exist" in err
    _no_containers(home)


def test_uninstalled_profile_says_how_to_install(home: Path, busybox_rootfs: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _vz(["oci", "run", "--kernel-profile", "developer", str(busybox_rootfs), "--", "true"], capsys)
    assert code == MISSING_ARTIFACTS
    assert "developer kernel profile is not installed" in err
    assert "vz-linux build --profile developer && vz-linux install" in err
    _no_containers(home)


def test_bad_env_and_unknown_container(home: Path, busybox_rootfs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _vz(["oci", "run", "-e", "NOVALUE", str(busybox_rootfs), "--", "true"], capsys)
    assert code == INVALID_CONFIG and "KEY=VALUE" in err
    for cmd in (["start", "ghost"], ["stop", "ghost"], ["rm", "ghost"], ["logs", "ghost"],
                ["exec", "ghost", "--", "true"]):
        code, err = _vz(["oci", *cmd], capsys)
        assert code == CONTAINER_STATE, cmd
        assert "no container named 'ghost'" in err


def test_ps_on_empty_data_dir(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        vz_main(["oci", "ps", "-a", "--json"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == "[]"
