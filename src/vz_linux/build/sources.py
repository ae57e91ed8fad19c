"""Kernel source acquisition (docs/profiles.md, "Sources, compile and cache"): Debian's
linux-source package, a tarball, or a tree.

Tarballs are verified (sha256 is mandatory) and extracted once per content hash into
``cache_root()/sources/``, shared by every profile and arch. Extraction goes to a staging
directory that is renamed into place (:func:`fsutil.publish_dir`), so a half-extracted tree is
never used; a file lock makes concurrent builds extract once.
"""

from __future__ import annotations

import enum
import json
import re
import shutil
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from ..bundle.metadata import KernelSourceInfo
from ..errors import KernelSourceError
from ..fsutil import publish_dir, publish_file, write_atomic
from ..hashing import sha256_file
from ..layout import cache_root, source_checkout
from ..run import run
from . import debian

_PIN_LINE = re.compile(r"^\s*([A-Z_]+)\s*:?=\s*(.*?)\s*$")
_MARKER = ".vz-linux-source.json"
_LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True)
class KernelPin:
    """``linux/kernel-version.mk``."""

    series: str
    version: str
    debian_package: str
    debian_tarball: Path
    cache_schema: str


def pin_path() -> Path:
    top = source_checkout()
    if top is None:
        raise KernelSourceError("linux/kernel-version.mk not found: vz-linux builds run from a source checkout")
    return top / "linux" / "kernel-version.mk"


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
        )
    except KeyError as e:
        raise KernelSourceError(f"{path}: missing {e.args[0]}") from None


class SourceKind(enum.StrEnum):
    debian_package = "debian-package"
    tarball = "tarball"
    tree = "tree"


@dataclass(frozen=True)
class SourceSpec:
    """What the user asked for. ``location`` is a path or URL (tarball) or a directory (tree)."""

    kind: SourceKind = SourceKind.debian_package
    location: str | None = None
    sha256: str | None = None
    # Plain http is refused except to the local machine, or with this explicit opt-in.
    allow_http: bool = False

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


def _download(url: str, sha256: str, allow_http: bool, downloads: Path) -> Path:
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme == "http" and not (allow_http or parsed.hostname in _LOCAL_HOSTS):
        raise KernelSourceError(f"refusing plain http URL {url}", hint="use https:// (or --allow-http)")
    if parsed.scheme not in ("http", "https"):
        raise KernelSourceError(f"unsupported URL scheme in {url}; use https://, or a local path")
    downloads.mkdir(parents=True, exist_ok=True)
    name = Path(parsed.path).name or "linux.tar"
    dest = downloads / f"{sha256}-{name}"
    if dest.is_file() and sha256_file(dest) == sha256:
        return dest
    try:
        with publish_file(dest) as tmp:
            with open(tmp, "wb") as out, urllib.request.urlopen(url, timeout=60) as resp:
                shutil.copyfileobj(resp, out, 1 << 20)
            _verify(tmp, sha256, url)
    except (urllib.error.URLError, OSError) as e:
        raise KernelSourceError(f"cannot download {url}: {getattr(e, 'reason', e)}") from None
    return dest


def _verify(path: Path, sha256: str, what: str) -> None:
    got = sha256_file(path)
    if got != sha256.lower():
        raise KernelSourceError(
            f"sha256 mismatch for {what}: expected {sha256.lower()}, got {got}",
            hint="check the URL/path and the --kernel-source-sha256 value",
        )


def _extract(tarball: Path, sha256: str, sources: Path) -> Path:
    """The extracted tree for this tarball content, extracting it once (atomically, locked)."""
    dest = sources / f"linux-{sha256[:16]}"
    if (dest / _MARKER).is_file():
        return dest
    sources.mkdir(parents=True, exist_ok=True)
    with FileLock(str(sources / f".{dest.name}.lock")):
        if (dest / _MARKER).is_file():
            return dest
        with publish_dir(dest, prefix=f".extract-{dest.name}-") as stage:
            # tar(1) detects the compression; the tarball's single top directory is dropped.
            run(["tar", "-xf", tarball, "-C", stage, "--strip-components=1", "--no-same-owner"])
            version = tree_version(stage)
            (stage / _MARKER).write_text(json.dumps({"sha256": sha256, "version": version,
                                                     "tarball": str(tarball)}) + "\n")
            if dest.exists():  # a stale partial tree from an older, interrupted layout
                shutil.rmtree(dest)
    return dest


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
        tree = _extract(pin.debian_tarball, sha, sources)
        version = tree_version(tree)
        info = _source_info(spec.kind, version=version, sha256=sha,
                            origin=f"{pin.debian_package}={deb_version}")
        if version != pin.version:
            raise KernelSourceError(
                f"{pin.debian_package} {deb_version} is Linux {version}, but linux/kernel-version.mk pins {pin.version}",
                hint="update KERNEL_VERSION in linux/kernel-version.mk after reviewing the fragments",
            )
    else:
        if not spec.location:
            raise KernelSourceError("a tarball source needs a path or URL")
        if not spec.sha256 or not re.fullmatch(r"[0-9a-fA-F]{64}", spec.sha256):
            raise KernelSourceError(f"a tarball source needs its sha256 (64 hex digits): {spec.location}",
                                    hint="pass --kernel-source-sha256")
        sha = spec.sha256.lower()
        if "://" in spec.location:
            tarball = _download(spec.location, sha, spec.allow_http, (cache or cache_root()) / "downloads")
        else:
            tarball = Path(spec.location).resolve()
            if not tarball.is_file():
                raise KernelSourceError(f"kernel tarball {tarball} does not exist")
            _verify(tarball, sha, str(tarball))
        tree = _extract(tarball, sha, sources)
        version = tree_version(tree)
        info = _source_info(spec.kind, version=version, sha256=sha, origin=spec.location)
    if not (version == pin.series or version.startswith(pin.series + ".")):
        raise KernelSourceError(
            f"kernel source {info.origin} is Linux {version}; the fragments are written for {pin.series}",
            hint="use a Linux " + pin.series + " source",
        )
    return KernelSource(tree=tree, info=info)
