"""Kernel source acquisition (docs/profiles.md, "Sources, compile and cache"): Debian's
linux-source package, a tarball, or a tree.

Tarballs are verified (sha256 is mandatory) and extracted once per content hash into
``cache_root()/sources/``, shared by every profile and arch. Extraction goes to a staging
directory that is renamed into place (:func:`fsutil.publish_dir`), so a half-extracted tree is
never used; a file lock makes concurrent builds extract once.
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import json
import re
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from http.client import HTTPMessage
from pathlib import Path
from typing import IO, BinaryIO

from filelock import FileLock

from ..bundle.metadata import KernelSourceInfo
from ..errors import (
    DownloadTimeoutError,
    DownloadTooLargeError,
    InsecureDownloadError,
    KernelSourceError,
    UnknownKernelPinError,
)
from ..fsutil import publish_dir, publish_file, write_atomic
from ..hashing import sha256_file
from ..layout import cache_root, source_checkout
from ..run import spawn
from . import debian

_PIN_LINE = re.compile(r"^\s*([A-Z_]+)\s*:?=\s*(.*?)\s*$")
_MARKER = ".vz-linux-source.json"
_LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
_EXTRACT_PREFIX = ".extract-"  # every extraction is staged under this name: a crashed one is swept


@dataclass(frozen=True)
class KernelPin:
    """``linux/kernel-version.mk`` (the default pin) or ``linux/kernel-version-<series>.mk``."""

    series: str
    version: str
    debian_package: str
    debian_tarball: Path
    cache_schema: str
    source_date_epoch: int  # the pinned package's changelog date (vz_linux.build.reproducible)
    path: Path | None = None  # the file it was read from


_DEFAULT_PIN_FILE = "kernel-version.mk"
_PIN_FILE = re.compile(r"^kernel-version-(\d+\.\d+)\.mk$")


def _linux_dir() -> Path:
    top = source_checkout()
    if top is None:
        raise KernelSourceError(f"linux/{_DEFAULT_PIN_FILE} not found: vz-linux builds run from a source checkout")
    return top / "linux"


def pin_path() -> Path:
    """The default pin file."""
    return _linux_dir() / _DEFAULT_PIN_FILE


def read_pin(path: Path | None = None) -> KernelPin:
    path = path or pin_path()
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if line.lstrip().startswith("#"):
            continue
        if m := _PIN_LINE.match(line):
            values[m[1]] = m[2]
    try:
        return KernelPin(
            series=values["KERNEL_SERIES"],
            version=values["KERNEL_VERSION"],
            debian_package=values["KERNEL_DEBIAN_PACKAGE"],
            debian_tarball=Path(values["KERNEL_DEBIAN_TARBALL"]),
            cache_schema=values["KERNEL_CACHE_SCHEMA"],
            source_date_epoch=int(values["KERNEL_SOURCE_DATE_EPOCH"]),
            path=path,
        )
    except KeyError as e:
        raise KernelSourceError(f"{path}: missing {e.args[0]}") from None
    except ValueError:
        raise KernelSourceError(f"{path}: KERNEL_SOURCE_DATE_EPOCH is not an integer") from None


def available_pins(linux: Path | None = None) -> dict[str, Path]:
    """Series -> pin file: the default pin and every ``kernel-version-<series>.mk`` beside it."""
    linux = linux or _linux_dir()
    pins = {read_pin(p).series: p for p in sorted(linux.iterdir()) if _PIN_FILE.match(p.name)}
    default = linux / _DEFAULT_PIN_FILE
    pins[read_pin(default).series] = default
    return pins


def select_pin(series: str | None = None, linux: Path | None = None) -> KernelPin:
    """The pin named ``series`` (``--kernel-pin``), or the default pin when None."""
    if series is None:
        return read_pin(pin_path() if linux is None else linux / _DEFAULT_PIN_FILE)
    pins = available_pins(linux)
    if series not in pins:
        raise UnknownKernelPinError(f"unknown kernel pin {series!r}; known pins: {', '.join(sorted(pins))}",
                                    hint="pick one of them (linux/kernel-version*.mk)")
    return read_pin(pins[series])


class SourceKind(enum.StrEnum):
    debian_package = "debian-package"
    tarball = "tarball"
    tree = "tree"


@dataclass(frozen=True)
class DownloadLimits:
    """Caps on one source download (docs/profiles.md, "Sources, compile and cache")."""

    max_bytes: int = 4 << 30
    max_seconds: float = 3600.0
    read_timeout: float = 60.0  # one stalled read; also bounds how far past max_seconds a read may run


@dataclass(frozen=True)
class SourceSpec:
    """What the user asked for. ``location`` is a path or URL (tarball) or a directory (tree)."""

    kind: SourceKind = SourceKind.debian_package
    location: str | None = None
    sha256: str | None = None
    # Plain http is refused except to the local machine, or with this explicit opt-in.
    allow_http: bool = False
    limits: DownloadLimits = DownloadLimits()

    @classmethod
    def from_option(cls, value: str | None, sha256: str | None = None, allow_http: bool = False) -> SourceSpec:
        """``--kernel-source``: unset/"debian" = the package; a directory = a tree; else a tarball."""
        if value is None or value == "debian":
            return cls()
        if "://" not in value and Path(value).is_dir():
            return cls(SourceKind.tree, value)
        return cls(SourceKind.tarball, value, sha256, allow_http)


@dataclass(frozen=True)
class KernelSource:
    tree: Path
    info: KernelSourceInfo  # recorded in version.json as ``kernel_source``

    @property
    def series(self) -> str:
        """``6.12`` of ``6.12.118``: build and config work dirs are per series (docs/profiles.md)."""
        return ".".join(self.info.version.split(".")[:2])

    @property
    def identity(self) -> str:
        """What the kernel cache key hashes for the source."""
        return json.dumps(
            {"kind": self.info.kind, "version": self.info.version, "sha256": self.info.sha256,
             "origin": self.info.origin if self.info.sha256 is None else None},
            sort_keys=True,
        )


def tree_version(tree: Path) -> str:
    """``VERSION.PATCHLEVEL.SUBLEVEL[EXTRAVERSION]`` from the tree's top Makefile."""
    try:
        text = (tree / "Makefile").read_text(errors="replace")
    except OSError as e:
        raise KernelSourceError(f"{tree} is not a kernel tree: {e.strerror}: Makefile") from None
    fields: dict[str, str] = {}
    for line in text.splitlines()[:20]:
        if m := re.match(r"^(VERSION|PATCHLEVEL|SUBLEVEL|EXTRAVERSION)\s*=\s*(\S*)", line):
            fields[m[1]] = m[2]
    if not {"VERSION", "PATCHLEVEL", "SUBLEVEL"} <= fields.keys():
        raise KernelSourceError(f"{tree}/Makefile has no VERSION/PATCHLEVEL/SUBLEVEL: not a kernel tree")
    return f"{fields['VERSION']}.{fields['PATCHLEVEL']}.{fields['SUBLEVEL']}{fields.get('EXTRAVERSION', '')}"


def _source_info(kind: SourceKind, *, version: str, sha256: str | None, origin: str) -> KernelSourceInfo:
    # model_validate: the model's ``kind`` is a Literal of exactly SourceKind's values.
    return KernelSourceInfo.model_validate(
        {"kind": kind.value, "version": version, "sha256": sha256, "origin": origin})


def _debian_package_version(package: str) -> str:
    version = debian.installed_versions([package]).get(package)
    if version is None:
        raise KernelSourceError(
            f"Debian package {package} is not installed",
            hint=f"run scripts/setup.sh (or apt-get install {package}), or pass --kernel-source",
        )
    return version


def _package_tarball_sha256(tarball: Path, sources: Path) -> str:
    """sha256 of the package's tarball, re-hashed only when its size or mtime changes (dpkg
    replaces the file on upgrade), so a cache-hit build does not hash the whole tarball every time."""
    st = tarball.stat()
    stamp = {"path": str(tarball), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    memo = sources / ".package-tarball-sha256.json"
    try:
        saved = json.loads(memo.read_text())
        if {k: saved.get(k) for k in stamp} == stamp and re.fullmatch(r"[0-9a-f]{64}", saved["sha256"]):
            return str(saved["sha256"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    sha = sha256_file(tarball)
    sources.mkdir(parents=True, exist_ok=True)
    write_atomic(memo, (json.dumps({**stamp, "sha256": sha}) + "\n").encode())
    return sha


def _check_url(url: str, allow_http: bool, redirected_from: str | None = None) -> None:
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("http", "https"):
        what = f"redirect from {redirected_from} to {url}" if redirected_from else f"URL scheme in {url}"
        raise InsecureDownloadError(f"unsupported {what}", hint="use https://, or a local path")
    if parsed.scheme == "https":
        return
    if redirected_from is not None and urllib.parse.urlsplit(redirected_from).scheme == "https" and not allow_http:
        raise InsecureDownloadError(f"refusing the https→http redirect from {redirected_from} to {url}",
                                    hint="fix the URL, or pass --allow-http to accept plain http")
    if not (allow_http or parsed.hostname in _LOCAL_HOSTS):
        raise InsecureDownloadError(f"refusing plain http URL {url}", hint="use https:// (or --allow-http)")


class _CheckedRedirects(urllib.request.HTTPRedirectHandler):
    """Every redirect target passes the same checks as the URL the user gave (no downgrade)."""

    def __init__(self, allow_http: bool) -> None:
        self.allow_http = allow_http

    def redirect_request(self, req: urllib.request.Request, fp: IO[bytes], code: int, msg: str,
                         headers: HTTPMessage, newurl: str) -> urllib.request.Request | None:
        try:
            _check_url(newurl, self.allow_http, redirected_from=req.full_url)
        except InsecureDownloadError:
            fp.close()
            raise
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _fetch(url: str, out: BinaryIO, limits: DownloadLimits, allow_http: bool) -> str:
    """Stream ``url`` into ``out`` within ``limits``; the sha256 of exactly the bytes written."""
    deadline = time.monotonic() + limits.max_seconds
    opener = urllib.request.build_opener(_CheckedRedirects(allow_http))
    digest = hashlib.sha256()
    got = 0
    with opener.open(url, timeout=min(limits.read_timeout, limits.max_seconds)) as resp:
        announced = resp.headers.get("Content-Length")
        if announced is not None and announced.isdigit() and int(announced) > limits.max_bytes:
            raise DownloadTooLargeError(f"{url} is {int(announced)} bytes, over the {limits.max_bytes}-byte cap")
        while chunk := resp.read1(1 << 16):
            got += len(chunk)
            if got > limits.max_bytes:
                raise DownloadTooLargeError(f"{url} sent more than the {limits.max_bytes}-byte cap")
            if time.monotonic() > deadline:
                raise DownloadTimeoutError(f"downloading {url} took longer than {limits.max_seconds:.0f}s")
            digest.update(chunk)
            out.write(chunk)
    return digest.hexdigest()


def _download(url: str, sha256: str, spec: SourceSpec, downloads: Path) -> tuple[Path, bool]:
    """The download of ``url`` in ``downloads`` (fetched once per content hash, verified as it is
    written) and whether it was fetched just now."""
    _check_url(url, spec.allow_http)
    downloads.mkdir(parents=True, exist_ok=True)
    name = Path(urllib.parse.urlsplit(url).path).name or "linux.tar"
    dest = downloads / f"{sha256}-{name}"
    if dest.is_file():
        return dest, False  # re-verified while it is extracted (_untar_verified)
    try:
        with publish_file(dest) as tmp, open(tmp, "wb") as out:
            got = _fetch(url, out, spec.limits, spec.allow_http)
            if got != sha256:
                raise _mismatch(url, sha256, got)
    except TimeoutError:
        raise DownloadTimeoutError(f"downloading {url}: no data for {spec.limits.read_timeout:.0f}s") from None
    except (urllib.error.URLError, OSError) as e:
        raise KernelSourceError(f"cannot download {url}: {getattr(e, 'reason', e)}") from None
    return dest, True


def _mismatch(what: str, expected: str, got: str) -> KernelSourceError:
    return KernelSourceError(f"sha256 mismatch for {what}: expected {expected}, got {got}",
                             hint="check the URL/path and the --kernel-source-sha256 value")


_COMPRESSION = ((b"\x1f\x8b", "-z"), (b"\xfd7zXZ\x00", "-J"), (b"BZh", "-j"), (b"\x28\xb5\x2f\xfd", "--zstd"))


def _untar_verified(tarball: BinaryIO, sha256: str, stage: Path, what: str) -> None:
    """Extract ``tarball`` into ``stage`` through tar's stdin while hashing the same bytes, so what
    is extracted is exactly what was verified (no check-then-reopen). Its single top dir is dropped."""
    head = tarball.read(8)
    flags = [flag for magic, flag in _COMPRESSION if head.startswith(magic)]
    digest = hashlib.sha256(head)
    argv = ["tar", "-x", *flags, "-f", "-", "-C", str(stage), "--strip-components=1", "--no-same-owner"]
    with tempfile.TemporaryFile() as err:
        with spawn(argv, stdin=subprocess.PIPE, stderr=err) as proc:
            assert proc.stdin is not None
            feeding = True
            chunk = head
            while chunk:
                if feeding:
                    try:
                        proc.stdin.write(chunk)
                    except BrokenPipeError:
                        feeding = False  # tar gave up; keep hashing, its exit code says why
                chunk = tarball.read(1 << 20)
                digest.update(chunk)
            with contextlib.suppress(BrokenPipeError):
                proc.stdin.close()
            code = proc.wait()
        err.seek(0)
        tail = err.read().decode(errors="replace").strip().splitlines()[-3:]
    if digest.hexdigest() != sha256:
        raise _mismatch(what, sha256, digest.hexdigest())
    if code != 0:
        raise KernelSourceError(f"extracting {what} failed (tar exit {code}): {' | '.join(tail)}")


def _extract(tarball: Path, sha256: str, sources: Path, what: str) -> Path:
    """The extracted tree for this tarball content, extracting it once (atomically, locked)."""
    dest = sources / f"linux-{sha256[:16]}"
    if (dest / _MARKER).is_file():
        return dest
    sources.mkdir(parents=True, exist_ok=True)
    with FileLock(str(sources / f".{dest.name}.lock")):
        if (dest / _MARKER).is_file():
            return dest
        try:
            f = open(tarball, "rb")  # noqa: SIM115 - closed below, after the stage is published
        except OSError as e:
            raise KernelSourceError(f"cannot read kernel tarball {tarball}: {e.strerror}") from None
        with f, publish_dir(dest, prefix=_EXTRACT_PREFIX) as stage:
            _untar_verified(f, sha256, stage, what)
            version = tree_version(stage)
            (stage / _MARKER).write_text(json.dumps({"sha256": sha256, "version": version,
                                                     "tarball": str(tarball)}) + "\n")
            if dest.exists():  # a stale partial tree from an older, interrupted layout
                shutil.rmtree(dest)
    return dest


def _tarball_tree(spec: SourceSpec, sha: str, cache: Path) -> Path:
    """The extracted tree of a sha256-pinned tarball given by path or URL."""
    assert spec.location is not None
    dest = cache / "sources" / f"linux-{sha[:16]}"
    if (dest / _MARKER).is_file():
        return dest
    if "://" not in spec.location:
        tarball = Path(spec.location).resolve()
        if not tarball.is_file():
            raise KernelSourceError(f"kernel tarball {tarball} does not exist")
        return _extract(tarball, sha, cache / "sources", str(tarball))
    downloaded, fresh = _download(spec.location, sha, spec, cache / "downloads")
    try:
        return _extract(downloaded, sha, cache / "sources", spec.location)
    except KernelSourceError:
        if fresh:
            raise
    downloaded.unlink(missing_ok=True)  # our earlier download no longer verifies: fetch it again
    downloaded, _ = _download(spec.location, sha, spec, cache / "downloads")
    return _extract(downloaded, sha, cache / "sources", spec.location)


def acquire_source(spec: SourceSpec, *, pin: KernelPin | None = None, cache: Path | None = None) -> KernelSource:
    """Resolve ``spec`` to a kernel tree on disk and record exactly what it is."""
    pin = pin or read_pin()
    sources = (cache or cache_root()) / "sources"
    if spec.kind is SourceKind.tree:
        if spec.location is None:
            raise KernelSourceError("a tree source needs a directory")
        tree = Path(spec.location).resolve()
        version = tree_version(tree)
        info = _source_info(spec.kind, version=version, sha256=None, origin=str(tree))
    elif spec.kind is SourceKind.debian_package:
        deb_version = _debian_package_version(pin.debian_package)
        if not pin.debian_tarball.is_file():
            raise KernelSourceError(f"{pin.debian_tarball} is missing although {pin.debian_package} is installed",
                                    hint=f"apt-get install --reinstall {pin.debian_package}")
        sha = _package_tarball_sha256(pin.debian_tarball, sources)
        tree = _extract(pin.debian_tarball, sha, sources, str(pin.debian_tarball))
        version = tree_version(tree)
        info = _source_info(spec.kind, version=version, sha256=sha,
                            origin=f"{pin.debian_package}={deb_version}")
        pin_name = f"linux/{pin.path.name}" if pin.path else "the kernel pin"
        if version != pin.version:
            raise KernelSourceError(
                f"{pin.debian_package} {deb_version} is Linux {version}, but {pin_name} pins {pin.version}",
                hint=f"update KERNEL_VERSION in {pin_name} after reviewing the fragments",
            )
    else:
        if not spec.location:
            raise KernelSourceError("a tarball source needs a path or URL")
        if not spec.sha256 or not re.fullmatch(r"[0-9a-fA-F]{64}", spec.sha256):
            raise KernelSourceError(f"a tarball source needs its sha256 (64 hex digits): {spec.location}",
                                    hint="pass --kernel-source-sha256")
        sha = spec.sha256.lower()
        tree = _tarball_tree(spec, sha, cache or cache_root())
        version = tree_version(tree)
        info = _source_info(spec.kind, version=version, sha256=sha, origin=spec.location)
    if not (version == pin.series or version.startswith(pin.series + ".")):
        raise KernelSourceError(
            f"kernel source {info.origin} is Linux {version}; the fragments are written for {pin.series}",
            hint=f"use a Linux {pin.series} source, or choose another pin with --kernel-pin",
        )
    return KernelSource(tree=tree, info=info)
