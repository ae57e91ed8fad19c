"""Crafted OCI image layouts and a poisoned image cache (docs/security.md, "Hostile inputs").

Layouts are built with the real umoci (tests/oci/conftest.py) and then altered by hand the way a
crafted download would be; the cache entry is altered the way a guest writing through the image
share would alter it. Every failure must be an ImageError (exit 51, or 55 for content that does
not match its digest), never a raw TypeError/KeyError/AttributeError nor a path outside the cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from benchmarks import image_cache
from benchmarks.figures import Figures

from vz_linux.errors import ImageError
from vz_linux.oci.image import prepare_image

from .conftest import CliRunner

Layout = dict[str, Any]


def _blob(layout: Path, digest: str) -> Path:
    return layout / "blobs" / "sha256" / digest.removeprefix("sha256:")


def _index(layout: Path) -> Layout:
    data: Layout = json.loads((layout / "index.json").read_text())
    return data


def _set_index(layout: Path, index: Any) -> None:
    (layout / "index.json").write_text(json.dumps(index))


def _put_blob(layout: Path, data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    _blob(layout, digest).write_bytes(data)
    return digest


def _rewrite_manifest(layout: Path, change: Callable[[Layout], None]) -> None:
    """Change the manifest (and store it under its new, correct digest, as a crafter would)."""
    index = _index(layout)
    manifest = json.loads(_blob(layout, index["manifests"][0]["digest"]).read_text())
    change(manifest)
    index["manifests"][0]["digest"] = _put_blob(layout, json.dumps(manifest).encode())
    _set_index(layout, index)


def _rewrite_config(layout: Path, change: Callable[[Layout], None]) -> None:
    def on_manifest(manifest: Layout) -> None:
        config = json.loads(_blob(layout, manifest["config"]["digest"]).read_text())
        change(config)
        manifest["config"]["digest"] = _put_blob(layout, json.dumps(config).encode())

    _rewrite_manifest(layout, on_manifest)


def _first(layout: Path, change: Callable[[Layout], None]) -> None:
    index = _index(layout)
    change(index["manifests"][0])
    _set_index(layout, index)


def _tamper_manifest_bytes(layout: Path) -> None:
    path = _blob(layout, _index(layout)["manifests"][0]["digest"])
    path.write_bytes(path.read_bytes() + b" ")  # same name, other content


def _duplicate_tag(layout: Path) -> None:
    index = _index(layout)
    index["manifests"].append(dict(index["manifests"][0], digest="sha256:" + "0" * 64))
    _set_index(layout, index)


CRAFTED: dict[str, Callable[[Path], None]] = {
    "index-a-list": lambda lay: _set_index(lay, [1, 2]),
    "manifests-a-number": lambda lay: _set_index(lay, {"schemaVersion": 2, "manifests": 5}),
    "annotations-a-list": lambda lay: _first(lay, lambda m: m.update(annotations=["latest"])),
    "tag-a-list": lambda lay: _first(lay, lambda m: m.update(
        annotations={"org.opencontainers.image.ref.name": ["latest"]})),
    "digest-short": lambda lay: _first(lay, lambda m: m.update(digest="sha256:abc")),
    "digest-other-algorithm": lambda lay: _first(lay, lambda m: m.update(digest="md5:" + "0" * 32)),
    "digest-a-path": lambda lay: _first(lay, lambda m: m.update(digest="sha256:../../../../etc")),
    "tag-twice": _duplicate_tag,
    "manifest-not-its-digest": _tamper_manifest_bytes,
    "manifest-layers-an-object": lambda lay: _rewrite_manifest(lay, lambda m: m.update(layers={"a": 1})),
    "manifest-layer-digest-a-path": lambda lay: _rewrite_manifest(
        lay, lambda m: m["layers"][0].update(digest="sha256:../../index.json")),
    "config-env-a-string": lambda lay: _rewrite_config(lay, lambda c: c["config"].update(Env="A=1")),
    "config-cmd-numbers": lambda lay: _rewrite_config(lay, lambda c: c["config"].update(Cmd=[1, 2])),
}


@pytest.fixture
def layout_copy(oci_layout: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(oci_layout, tmp_path / "layout", symlinks=True))


@pytest.mark.parametrize("craft", CRAFTED.values(), ids=CRAFTED.keys())
def test_crafted_layout_is_an_image_error(layout_copy: Path, tmp_path: Path, craft: Callable[[Path], None]) -> None:
    craft(layout_copy)
    images = tmp_path / "images"
    with pytest.raises(ImageError) as caught:
        prepare_image(f"{layout_copy}:latest", images)
    expected = 55 if craft is _tamper_manifest_bytes else 51
    assert caught.value.exit_code == expected, caught.value
    assert not images.exists() or [p.name for p in images.iterdir()] == []  # nothing half-written


def test_a_digest_cannot_name_a_path_outside_the_cache(oci_layout: Path, layout_copy: Path, tmp_path: Path,
                                                        vz: CliRunner) -> None:
    """A digest with path components must not select a directory outside the image cache, even
    one shaped like a cache entry (rootfs/ inside) next to a real entry the path can climb out of."""
    images = tmp_path / "oci" / "images"
    real = prepare_image(str(oci_layout), images)  # a real entry: sha256-<hex>/ exists
    outside = tmp_path / "outside"
    (outside / "rootfs" / "bin").mkdir(parents=True)
    (outside / "rootfs" / "bin" / "sh").write_bytes((real.path / "bin" / "busybox").read_bytes())
    os.chmod(outside / "rootfs" / "bin" / "sh", 0o755)
    assert real.digest is not None
    escape = f"{real.digest}/../../../outside"
    assert (images / escape.replace(":", "-") / "rootfs").resolve() == (outside / "rootfs").resolve()
    _first(layout_copy, lambda m: m.update(digest=escape))
    with pytest.raises(ImageError, match="no valid digest"):
        prepare_image(f"{layout_copy}:latest", images)
    proc = vz("oci", "create", "--kernel-profile", "container", f"{layout_copy}:latest", "--", "/bin/sh")
    assert proc.returncode == 51, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


POISONS: dict[str, Callable[[Path], None]] = {
    "file-rewritten": lambda root: (root / "etc" / "hello.txt").write_text("poisoned\n"),
    "file-added": lambda root: (root / "bin" / "backdoor").write_text("#!/bin/sh\n"),
    "mode-changed": lambda root: os.chmod(root / "etc" / "hello.txt", 0o4777),
    "symlink-retargeted": lambda root: (os.unlink(root / "bin" / "ls"), os.symlink("/tmp/evil", root / "bin" / "ls")),
    "file-removed": lambda root: os.unlink(root / "etc" / "hello.txt"),
}


def test_a_poisoned_cache_entry_is_detected_not_reused(oci_layout: Path, tmp_path: Path) -> None:
    images = tmp_path / "images"
    for name, poison in POISONS.items():
        first = prepare_image(str(oci_layout), images)
        pristine = {p: (os.lstat(first.path / p).st_mode, os.readlink(first.path / p) if os.path.islink(first.path / p)
                        else None) for p in ("etc/hello.txt", "bin/ls")}
        poison(first.path)
        again = prepare_image(str(oci_layout), images)
        assert again.path == first.path, name
        assert (again.path / "etc" / "hello.txt").read_text() == "hello from the image\n", name
        assert not (again.path / "bin" / "backdoor").exists(), name
        for p, (mode, link) in pristine.items():
            assert os.lstat(again.path / p).st_mode == mode, (name, p)
            assert (os.readlink(again.path / p) if os.path.islink(again.path / p) else None) == link, (name, p)
        assert [p.name for p in images.iterdir()] == [first.path.parent.name], name  # no stage left


def test_image_cache_benchmark_measures_reuse(metrics: Figures, tmp_path: Path) -> None:
    """Smoke test of benchmarks/image_cache.py: every timed call reused the first unpack."""
    reused = image_cache.measure(metrics, 3, 50, tmp_path)
    assert set(reused) == {"busybox", "extra"} and all(inode > 0 for inode in reused.values())
    assert metrics.get("image_entries_extra").value > metrics.get("image_entries_busybox").value
    for kind in reused:
        p50, p95 = metrics.get(f"image_cache_hit_{kind}_p50"), metrics.get(f"image_cache_hit_{kind}_p95")
        assert p50.unit == p95.unit == "ms" and 0 < p50.value <= p95.value
