"""Block images of container images (vz_linux.oci.blockimage): real mke2fs, real e2fsprogs reading
the result back; no VM (the VM side is tests/oci/test_template_vm.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vz_linux.errors import BlockImageError
from vz_linux.oci import blockimage
from vz_linux.oci.blockimage import (
    IMAGE_FILE,
    RECORD_FILE,
    SIZE_CLASSES,
    blocks_root,
    ensure_block_image,
    image_key,
    placeholder,
    size_class,
)

from .conftest import make_busybox_rootfs

DIGEST = "sha256:" + "ab" * 32


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("VZ_LINUX_CACHE_DIR", str(root))
    return root


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    return make_busybox_rootfs(tmp_path / "rootfs")


def debugfs(image: Path, request: str) -> str:
    return subprocess.run(["debugfs", "-R", request, str(image)], capture_output=True, text=True,
                          check=True).stdout


def test_builds_a_sparse_read_only_ext4_of_the_size_class(cache: Path, rootfs: Path) -> None:
    img = ensure_block_image(rootfs)
    assert img.built
    assert img.path.parent.parent == blocks_root() == cache / "oci-blocks"
    st = img.path.stat()
    assert st.st_size == img.disk_bytes == SIZE_CLASSES[0]
    assert img.fs_bytes < 64 << 20  # a BusyBox image: the filesystem is sized to its content
    assert st.st_blocks * 512 < 16 << 20  # the rest of the disk is a hole
    assert st.st_mode & 0o777 == 0o444
    # The filesystem is clean and holds the image's files with their content and symlinks.
    fsck = subprocess.run(["e2fsck", "-fn", str(img.path)], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    assert debugfs(img.path, "cat /etc/hello.txt") == "hello from the image\n"
    assert "Type: symlink" in debugfs(img.path, "stat /bin/sh")
    busybox = subprocess.run(["debugfs", "-R", "cat /bin/busybox", str(img.path)], capture_output=True,
                             check=True).stdout
    assert busybox == (rootfs / "bin" / "busybox").read_bytes()


def test_key_is_the_digest_or_the_tree(cache: Path, rootfs: Path, tmp_path: Path) -> None:
    other = make_busybox_rootfs(tmp_path / "other")
    # A digest names the content: the tree it was unpacked to does not change the key.
    assert image_key(rootfs, DIGEST) == image_key(other, DIGEST)
    assert image_key(rootfs, DIGEST) != image_key(rootfs, "sha256:" + "cd" * 32)
    # A directory is keyed by its tree: a change below it is a new image.
    before = image_key(rootfs, None)
    assert before == image_key(rootfs, None)
    first = ensure_block_image(rootfs)
    (rootfs / "etc" / "hello.txt").write_text("changed\n")
    assert image_key(rootfs, None) != before
    second = ensure_block_image(rootfs)
    assert second.built and second.path != first.path
    assert debugfs(second.path, "cat /etc/hello.txt") == "changed\n"


def test_cached_image_is_reused(cache: Path, rootfs: Path) -> None:
    first = ensure_block_image(rootfs, DIGEST)
    again = ensure_block_image(rootfs, DIGEST)
    assert first.built and not again.built
    assert again.path == first.path and again.disk_bytes == first.disk_bytes
    assert again.path.stat().st_ino == first.path.stat().st_ino


@pytest.mark.parametrize("damage", ["overwrite", "truncate", "record", "missing"])
def test_damaged_image_is_built_again(cache: Path, rootfs: Path, damage: str) -> None:
    img = ensure_block_image(rootfs, DIGEST)
    if damage == "overwrite":
        os.chmod(img.path, 0o644)
        with open(img.path, "r+b") as f:
            f.seek(1024)
            f.write(b"\0" * 1024)  # the superblock
    elif damage == "truncate":
        os.chmod(img.path, 0o644)
        os.truncate(img.path, img.disk_bytes // 2)
    elif damage == "record":
        (img.path.parent / RECORD_FILE).write_text("{not json")
    else:
        img.path.unlink()
    again = ensure_block_image(rootfs, DIGEST)
    assert again.built
    assert again.path.stat().st_size == SIZE_CLASSES[0]
    assert debugfs(again.path, "cat /etc/hello.txt") == "hello from the image\n"
    assert json.loads((again.path.parent / RECORD_FILE).read_text())["inode"] == again.path.stat().st_ino


_BUILD = """
import json, sys
from pathlib import Path
from vz_linux.oci.blockimage import ensure_block_image
img = ensure_block_image(Path(sys.argv[1]), sys.argv[2])
print(json.dumps({"built": img.built, "path": str(img.path), "ino": img.path.stat().st_ino}))
"""


def test_concurrent_builders_build_once(cache: Path, rootfs: Path) -> None:
    env = dict(os.environ, VZ_LINUX_CACHE_DIR=str(cache))
    procs = [subprocess.Popen([sys.executable, "-c", _BUILD, str(rootfs), DIGEST], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(4)]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        results.append(json.loads(out))
    assert sum(r["built"] for r in results) == 1
    assert len({(r["path"], r["ino"]) for r in results}) == 1
    entry = Path(results[0]["path"]).parent
    assert sorted(p.name for p in entry.iterdir()) == [RECORD_FILE, IMAGE_FILE]
    assert not [p for p in entry.parent.iterdir() if p.name.startswith(".stage-")]


def test_size_classes_and_too_large(cache: Path, rootfs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert size_class(1) == SIZE_CLASSES[0]
    assert size_class(SIZE_CLASSES[0] + 1) == SIZE_CLASSES[1]
    assert size_class(SIZE_CLASSES[-1] + 1) is None
    # An image whose filesystem would not fit the largest class is refused with its own error.
    monkeypatch.setattr(blockimage, "estimate_fs_bytes", lambda _root: SIZE_CLASSES[-1] + (1 << 20))
    with pytest.raises(BlockImageError, match="over the largest block image size") as e:
        ensure_block_image(rootfs, DIGEST)
    assert e.value.exit_code == 89


def test_too_small_estimate_is_grown(cache: Path, rootfs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (rootfs / "big").write_bytes(os.urandom(6 << 20))
    monkeypatch.setattr(blockimage, "estimate_fs_bytes", lambda _root: 4 << 20)
    img = ensure_block_image(rootfs, DIGEST)
    assert img.fs_bytes > 4 << 20
    assert subprocess.run(["e2fsck", "-fn", str(img.path)], capture_output=True).returncode == 0


def test_placeholder_is_an_all_hole_disk_of_the_class(cache: Path) -> None:
    path = placeholder(SIZE_CLASSES[0])
    st = path.stat()
    assert st.st_size == SIZE_CLASSES[0] and st.st_blocks == 0
    assert placeholder(SIZE_CLASSES[0]) == path
    assert path.stat().st_ino == st.st_ino  # kept, not remade
