"""Kernel source acquisition: tarballs by path and by URL (a real HTTP server on 127.0.0.1), the
mandatory sha256, atomic once-only extraction, existing trees, the Debian package default."""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from vz_linux.build.sources import KernelPin, SourceKind, SourceSpec, acquire_source, read_pin
from vz_linux.errors import KernelSourceError

from ..local_http import local_http_server

VZ_LINUX = Path(sys.executable).parent / "vz-linux"
MAKEFILE = "# SPDX\nVERSION = 6\nPATCHLEVEL = 1\nSUBLEVEL = 7\nEXTRAVERSION =\nNAME = test\n"


def _tarball(path: Path, makefile: str = MAKEFILE) -> str:
    """A tiny 'kernel tree' tarball (one top dir, like kernel.org's); returns its sha256."""
    with tarfile.open(path, "w:gz") as tar:
        for name, text in (("linux-6.1.7/Makefile", makefile), ("linux-6.1.7/Kconfig", "# empty\n")):
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def pin(tmp_path: Path) -> KernelPin:
    return KernelPin(series="6.1", version="6.1.7", debian_package="linux-source-6.1",
                     debian_tarball=Path("/usr/src/linux-source-6.1.tar.xz"), cache_schema="1")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    with local_http_server(handler) as port:
        yield f"http://127.0.0.1:{port}", root


def test_tarball_by_url_verified_and_extracted_once(server: tuple[str, Path], tmp_path: Path,
                                                    pin: KernelPin) -> None:
    base, root = server
    sha = _tarball(root / "linux-6.1.7.tar.gz")
    cache = tmp_path / "cache"
    src = acquire_source(SourceSpec(SourceKind.tarball, f"{base}/linux-6.1.7.tar.gz", sha), pin=pin, cache=cache)
    assert src.info.kind == "tarball" and src.info.version == "6.1.7" and src.info.sha256 == sha
    assert src.info.origin == f"{base}/linux-6.1.7.tar.gz"
    assert (src.tree / "Makefile").read_text() == MAKEFILE  # top dir stripped
    assert src.tree.parent == cache / "sources"
    # Again: the same tree, not re-extracted (a file planted in it survives).
    (src.tree / "planted").write_text("x")
    again = acquire_source(SourceSpec(SourceKind.tarball, f"{base}/linux-6.1.7.tar.gz", sha), pin=pin, cache=cache)
    assert again.tree == src.tree and (again.tree / "planted").exists()
    # Nothing half-written is left next to it.
    assert [p.name for p in (cache / "sources").iterdir() if not p.name.endswith(".lock")] == [src.tree.name]


def test_tarball_by_url_with_wrong_sha256_fails(server: tuple[str, Path], tmp_path: Path, pin: KernelPin) -> None:
    base, root = server
    sha = _tarball(root / "linux.tar.gz")
    wrong = ("0" if sha[0] != "0" else "1") + sha[1:]
    cache = tmp_path / "cache"
    with pytest.raises(KernelSourceError, match=f"sha256 mismatch .* expected {wrong}, got {sha}"):
        acquire_source(SourceSpec(SourceKind.tarball, f"{base}/linux.tar.gz", wrong), pin=pin, cache=cache)
    assert not (cache / "sources").exists()  # nothing extracted
    assert list((cache / "downloads").iterdir()) == []  # and no partial download kept


def test_tarball_needs_sha256_and_https(tmp_path: Path, pin: KernelPin) -> None:
    tarball = tmp_path / "linux.tar.gz"
    _tarball(tarball)
    with pytest.raises(KernelSourceError, match="needs its sha256"):
        acquire_source(SourceSpec(SourceKind.tarball, str(tarball), None), pin=pin, cache=tmp_path / "c")
    with pytest.raises(KernelSourceError, match="refusing plain http"):
        acquire_source(SourceSpec(SourceKind.tarball, "http://mirror.invalid/linux.tar.xz", "a" * 64),
                       pin=pin, cache=tmp_path / "c")
    with pytest.raises(KernelSourceError, match="sha256 mismatch"):
        acquire_source(SourceSpec(SourceKind.tarball, str(tarball), "b" * 64), pin=pin, cache=tmp_path / "c")


def test_tarball_by_path_and_series_check(tmp_path: Path, pin: KernelPin) -> None:
    good = tmp_path / "good.tar.gz"
    sha = _tarball(good)
    src = acquire_source(SourceSpec(SourceKind.tarball, str(good), sha.upper()), pin=pin, cache=tmp_path / "c")
    assert src.info.version == "6.1.7" and src.info.sha256 == sha
    other = tmp_path / "other.tar.gz"
    sha2 = _tarball(other, MAKEFILE.replace("PATCHLEVEL = 1", "PATCHLEVEL = 6"))
    with pytest.raises(KernelSourceError, match=r"Linux 6\.6\.7; the fragments are written for 6\.1"):
        acquire_source(SourceSpec(SourceKind.tarball, str(other), sha2), pin=pin, cache=tmp_path / "c")


def test_existing_tree(tmp_path: Path, pin: KernelPin) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "Makefile").write_text(MAKEFILE)
    spec = SourceSpec.from_option(str(tree))
    assert spec.kind is SourceKind.tree
    src = acquire_source(spec, pin=pin, cache=tmp_path / "c")
    assert (src.info.kind, src.info.version, src.info.sha256, src.tree) == ("tree", "6.1.7", None, tree)
    (tmp_path / "empty").mkdir()
    with pytest.raises(KernelSourceError, match="not a kernel tree"):
        acquire_source(SourceSpec(SourceKind.tree, str(tmp_path / "empty")), pin=pin, cache=tmp_path / "c")


@pytest.mark.kernel
def test_debian_package_default_matches_the_pin() -> None:
    pin = read_pin()
    src = acquire_source(SourceSpec())
    assert src.info.kind == "debian-package"
    assert src.info.version == pin.version
    assert src.info.origin.startswith(f"{pin.debian_package}=")
    assert src.info.sha256 is not None and len(src.info.sha256) == 64
    assert (src.tree / "kernel" / "module" / "Kconfig").is_file()
    # kconfiglib's `option modules` fix is applied in memory only: the shared tree is untouched.
    assert "\toption modules" not in (src.tree / "kernel" / "module" / "Kconfig").read_text()


def test_cli_wrong_sha256_is_one_line_with_its_exit_code(server: tuple[str, Path], tmp_path: Path) -> None:
    base, root = server
    sha = _tarball(root / "linux.tar.gz")
    env_cache = tmp_path / "cache"
    proc = subprocess.run(
        [str(VZ_LINUX), "config", "--profile", "container", "--kernel-source", f"{base}/linux.tar.gz",
         "--kernel-source-sha256", "f" * 64],
        capture_output=True, text=True, timeout=120,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "VZ_LINUX_CACHE_DIR": str(env_cache)},
    )
    assert proc.returncode == 30  # KernelSourceError (errors.py)
    assert "Traceback" not in proc.stderr
    [line] = proc.stderr.strip().splitlines()
    assert f"sha256 mismatch for {base}/linux.tar.gz: expected {'f' * 64}, got {sha}" in line
