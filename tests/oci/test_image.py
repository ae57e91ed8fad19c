"""IMAGE resolution: rootfs dirs, OCI layouts unpacked with the real umoci, and the bad inputs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vz_linux.errors import CommandNotFoundError, ImageError
from vz_linux.oci.image import find_command, prepare_image


def test_rootfs_dir_is_used_in_place(busybox_rootfs: Path, tmp_path: Path) -> None:
    r = prepare_image(str(busybox_rootfs), tmp_path / "images")
    assert r.path == busybox_rootfs.resolve()
    assert r.digest is None
    assert not (tmp_path / "images").exists()  # nothing unpacked or copied


def test_oci_layout_is_unpacked_once_with_image_defaults(oci_layout: Path, tmp_path: Path) -> None:
    images = tmp_path / "images"
    r = prepare_image(str(oci_layout), images)
    assert (r.path / "etc" / "hello.txt").read_text() == "hello from the image\n"
    assert os.readlink(r.path / "bin" / "sh") == "busybox"
    assert r.digest is not None and r.digest.startswith("sha256:")
    assert r.defaults.args == ("/bin/sh", "-c", "echo default-cmd in $PWD")
    assert r.defaults.cwd == "/srv"
    assert "IMGVAR=from-image" in r.defaults.env
    inode = r.path.stat().st_ino
    again = prepare_image(f"{oci_layout}:latest", images)
    assert again.path == r.path and r.path.stat().st_ino == inode  # cached by digest, not unpacked again
    assert [p.name for p in images.iterdir()] == [r.path.parent.name]  # no temp dirs left


def test_missing_image(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="does not exist"):
        prepare_image(str(tmp_path / "nope"), tmp_path / "images")


def test_dir_that_is_not_a_rootfs(tmp_path: Path) -> None:
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "README").write_text("hi")
    with pytest.raises(ImageError, match="neither an OCI image layout"):
        prepare_image(str(tmp_path / "junk"), tmp_path / "images")


def test_file_is_not_an_image(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(ImageError, match="not a directory"):
        prepare_image(str(tmp_path / "f"), tmp_path / "images")


def test_unknown_tag(oci_layout: Path, tmp_path: Path) -> None:
    with pytest.raises(ImageError, match=r"no tag 'v2' \(tags: latest\)"):
        prepare_image(f"{oci_layout}:v2", tmp_path / "images")


def test_find_command_follows_symlinks_inside_the_rootfs(busybox_rootfs: Path) -> None:
    env = ("PATH=/usr/bin:/bin",)
    assert find_command(busybox_rootfs, "sh", env, "/") == "/bin/sh"
    assert find_command(busybox_rootfs, "/bin/echo", env, "/") == "/bin/echo"
    assert find_command(busybox_rootfs, "../bin/true", env, "/etc") == "/bin/true"
    with pytest.raises(CommandNotFoundError) as e:
        find_command(busybox_rootfs, "no-such-cmd", env, "/")
    assert e.value.exit_code == 127
    with pytest.raises(CommandNotFoundError):
        find_command(busybox_rootfs, "/etc/hello.txt", env, "/")  # exists, not executable


def test_absolute_symlink_resolves_in_the_rootfs_not_the_host(tmp_path: Path) -> None:
    root = tmp_path / "r"
    (root / "bin").mkdir(parents=True)
    os.symlink("/usr/bin/env", root / "bin" / "env")  # exists on the host, not in the image
    with pytest.raises(CommandNotFoundError):
        find_command(root, "env", ("PATH=/bin",), "/")
