"""The bundle's OCI runtime: crun, built fully static from Debian's source package
(docs/guest.md, "crun"; how containers use it: docs/oci.md).

* Source: ``apt-get source crun=<pin>`` (deb-src is configured by scripts/setup.sh), unpacked
  with Debian's patches by ``dpkg-source -x`` (:func:`debian.unpack_source`); any other version
  is refused.
* Libraries: the host arch links the installed ``-dev`` packages; another arch links a sysroot
  of that arch's ``.deb`` files fetched and unpacked (:func:`debian.unpack_binaries`; installing
  ``:arm64`` dev packages would remove the amd64 ones).
* Recipe: ``./configure --disable-systemd``, ``git-version.h`` written first,
  ``make crun`` with ``LDFLAGS=-all-static``, yajl's static archive (Debian names it
  ``libyajl_s.a``; exposed as ``libyajl.a``) and ``-lgpg-error`` after libgcrypt.
* The stripped binary is cached under a key over source version + arch + toolchain + library
  versions, so it is built once per machine; ``file`` must call it statically linked.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from .. import hashing
from ..arch import Architecture
from ..errors import BuildError, CommandFailedError
from ..fsutil import publish_dir
from ..hashing import sha256_file
from ..layout import cache_root, source_checkout
from ..run import run
from . import debian
from .buildroot import current_identity
from .kbuild import tool_identity

NAME = "crun"
PINNED_VERSION = "1.8.1-1+deb12u1"  # bookworm's crun source package
CACHE_SCHEMA = 2  # 2: no -g, build paths mapped (docs/reproducible.md)
# -dev packages crun links statically, and the runtime packages holding their .a/.so siblings.
LIBRARY_PACKAGES: tuple[str, ...] = (
    "libcap-dev", "libcap2", "libgcrypt20", "libgcrypt20-dev", "libgpg-error-dev", "libgpg-error0",
    "libseccomp-dev", "libseccomp2", "libyajl-dev", "libyajl2",
)


@dataclass(frozen=True)
class OciRuntime:
    arch: Architecture
    path: Path  # the cached static binary
    package_version: str  # Debian source version, e.g. "1.8.1-1+deb12u1"
    cache_key: str
    build_seconds: float | None  # of the build that produced the cached binary
    patches: tuple[str, ...] = ()  # our patches applied on top of Debian's (file names)

    name: str = NAME

    @property
    def version(self) -> str:
        """What ``version.json`` records: upstream, the Debian package, and our patches if any
        (``crun --version`` prints the package version in its commit line)."""
        ours = f" + {', '.join(self.patches)}" if self.patches else ""
        return f"{self.package_version.rsplit('-', 1)[0]} (Debian {self.package_version}{ours})"


def _root() -> Path:
    return cache_root() / NAME


def _lock() -> FileLock:
    """One crun build/fetch at a time per machine; the others then find the cache filled."""
    _root().mkdir(parents=True, exist_ok=True)
    return FileLock(str(_root() / ".lock"))


# --- source -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CrunSource:
    tree: Path
    version: str
    dsc_sha256: str  # covers the orig tarball and the Debian patches (the .dsc lists their hashes)


def fetch_source(version: str = PINNED_VERSION) -> CrunSource:
    if version != PINNED_VERSION:
        raise BuildError(f"crun {version} is not the pinned version {PINNED_VERSION}; refusing to build it")
    with _lock():
        return _fetch_source(version)


def _fetch_source(version: str) -> CrunSource:
    dest = _root() / "source" / version
    if (dest / "tree").is_dir() and (dest / "dsc.sha256").is_file():
        return CrunSource(dest / "tree", version, (dest / "dsc.sha256").read_text().strip())
    with publish_dir(dest, prefix=".fetch-") as stage:
        try:
            dsc_sha256 = debian.unpack_source(NAME, version, stage / "tree")
        except CommandFailedError as e:
            raise BuildError(
                f"cannot fetch Debian's crun source {version}: {e}",
                hint="scripts/setup.sh adds the deb-src entry; only the pinned version is accepted",
            ) from None
        (stage / "dsc.sha256").write_text(dsc_sha256 + "\n")
        if dest.exists():  # an incomplete entry (we hold the lock): replace it
            shutil.rmtree(dest)
    return CrunSource(dest / "tree", version, (dest / "dsc.sha256").read_text().strip())


# --- libraries ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Libraries:
    sysroot: Path | None  # None: the host's installed packages
    versions: dict[str, str]  # package -> version (part of the cache key)

    def libdir(self, arch: Architecture) -> Path:
        base = self.sysroot if self.sysroot is not None else Path("/")
        return base / "usr" / "lib" / arch.gnu_triplet


def _installed_versions(arch: Architecture) -> dict[str, str]:
    versions = debian.installed_versions(LIBRARY_PACKAGES, arch)
    missing = sorted(set(LIBRARY_PACKAGES) - set(versions))
    if missing:
        raise BuildError(f"crun needs {', '.join(missing)} installed", hint="run scripts/setup.sh")
    return versions


def _candidate_versions(arch: Architecture) -> dict[str, str]:
    versions = debian.candidate_versions(LIBRARY_PACKAGES, arch)
    missing = sorted(set(LIBRARY_PACKAGES) - set(versions))
    if missing:
        raise BuildError(
            f"apt knows no {arch.debian_arch} packages {', '.join(missing)}",
            hint=f"run scripts/setup.sh (adds the {arch.debian_arch} architecture)",
        )
    return versions


def get_libraries(arch: Architecture) -> Libraries:
    if arch is Architecture.host():
        return Libraries(None, _installed_versions(arch))
    versions = _candidate_versions(arch)
    dest = _root() / "sysroot" / arch.value / hashing.cache_key(versions)[:16]
    if not (dest / "usr").is_dir():
        with publish_dir(dest, prefix=".fetch-") as sysroot:
            debian.unpack_binaries(versions, arch, sysroot)
    return Libraries(dest, versions)


# --- build ----------------------------------------------------------------------------------------------
def patches() -> list[Path]:
    """Our patches on top of Debian's (guest/crun/patches/*.patch, applied in name order)."""
    top = source_checkout()
    return sorted((top / "guest" / "crun" / "patches").glob("*.patch")) if top is not None else []


def cache_key(source: CrunSource, arch: Architecture, toolchain: str, libs: Libraries) -> str:
    parts: dict[str, object] = {
        "schema": CACHE_SCHEMA, "source": source.version, "dsc": source.dsc_sha256,
        "arch": arch.value, "toolchain": toolchain, "libraries": libs.versions,
        "patches": [(p.name, sha256_file(p)) for p in patches()],
    }
    # configure probes more of the system than the compiler and these libraries: built in the
    # hermetic root, crun differs from the host's build (docs/reproducible.md), so it is keyed by
    # the root's package manifest there; host keys are unchanged.
    root = current_identity()
    if root is not None:
        parts["buildroot"] = root
    return hashing.cache_key(parts)


def ensure_crun(arch: Architecture, version: str = PINNED_VERSION) -> OciRuntime:
    """The static crun for ``arch`` from the cache, building it (minutes) on a miss."""
    source = fetch_source(version)
    with _lock():
        libs = get_libraries(arch)
        toolchain = tool_identity(f"{arch.cross_compile_prefix()}gcc")
        key = cache_key(source, arch, toolchain, libs)
        out_dir = _root() / "bin" / arch.value / key
        binary = out_dir / NAME
        if not binary.is_file():
            _build(source, arch, libs, out_dir)
        info = json.loads((out_dir / "build.json").read_text())
        return OciRuntime(arch, binary, source.version, key, info.get("seconds"),
                          tuple(p.name for p in patches()))


def check_static(binary: Path, arch: Architecture) -> str:
    """``file``'s description; raises unless it is a statically linked ELF for ``arch``."""
    desc = run(["file", "-b", str(binary)]).stdout.decode().strip()
    if "statically linked" not in desc or arch.file_machine not in desc:
        raise BuildError(f"{binary} is not a static {arch.value} ELF: {desc}")
    return desc


def _build(source: CrunSource, arch: Architecture, libs: Libraries, out_dir: Path) -> None:
    """Compile in a scratch directory, then publish the binary and build.json as ``out_dir``."""
    started = time.monotonic()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir.parent, prefix=f".build-{out_dir.name[:12]}-") as tmp:
        binary = _compile(source, arch, libs, Path(tmp))
        with publish_dir(out_dir) as stage:
            shutil.copy2(binary, stage / NAME)
            (stage / "build.json").write_text(json.dumps({
                "version": source.version, "arch": arch.value, "seconds": round(time.monotonic() - started, 1),
                "libraries": libs.versions,
            }, indent=2, sort_keys=True) + "\n")
            if out_dir.exists():  # incomplete (we hold the lock and it has no binary): replace it
                shutil.rmtree(out_dir)


def _compile(source: CrunSource, arch: Architecture, libs: Libraries, work: Path) -> Path:
    """Patch, configure and make crun in ``work``; returns the stripped, checked static binary."""
    tree = work / "src"
    shutil.copytree(source.tree, tree, symlinks=True)
    for patch in patches():
        run(["patch", "-p1", "--forward", "--batch", "-i", str(patch)], cwd=tree)
    # `make` would otherwise run git to generate it; a source package has no .git.
    (tree / "git-version.h").write_text(f'#define GIT_VERSION "{source.version}"\n')
    static = work / "static-libs"
    static.mkdir()
    libdir = libs.libdir(arch)
    (static / "libyajl.a").symlink_to(libdir / "libyajl_s.a")
    ldflags = f"-L{static}" + (f" -L{libdir}" if libs.sysroot is not None else "")
    # No -g, and every build path mapped, so the binary does not depend on where it was built.
    mapped = [(tree, "."), (work, "/build"), *([(libs.sysroot, "/sysroot")] if libs.sysroot is not None else [])]
    maps = " ".join(f"-ffile-prefix-map={d}={to}" for d, to in mapped)
    configure = ["./configure", "--disable-systemd", "--enable-static", "--disable-shared",
                 f"LDFLAGS={ldflags}", f"CFLAGS=-O2 {maps}"]
    env = {"LC_ALL": "C", "SOURCE_DATE_EPOCH": "0"}
    if libs.sysroot is not None:
        inc = libs.sysroot / "usr" / "include"
        configure += [f"--host={arch.gnu_triplet}", f"CPPFLAGS=-I{inc} -I{inc / arch.gnu_triplet}"]
        env |= {"PKG_CONFIG_LIBDIR": str(libdir / "pkgconfig"), "PKG_CONFIG_SYSROOT_DIR": str(libs.sysroot)}
    log = work / "build.log"
    jobs = str(min(2, os.cpu_count() or 1))
    with open(log, "wb") as logf:
        try:
            run(configure, cwd=tree, env=env, stdout=logf, stderr=logf)
            # libocispec first: its headers are generated during its make, and a parallel `make crun`
            # can compile crun's sources against a half-written header.
            run(["nice", "-n", "10", "make", f"-j{jobs}", "-C", "libocispec"], cwd=tree, env=env,
                stdout=logf, stderr=logf)
            run(["nice", "-n", "10", "make", f"-j{jobs}", NAME, f"LDFLAGS=-all-static {ldflags}",
                 "LIBS=-lgpg-error"], cwd=tree, env=env, stdout=logf, stderr=logf)
        except CommandFailedError as e:
            kept = _root() / f"failed-build-{arch.value}.log"
            shutil.copyfile(log, kept)
            tail = " | ".join(log.read_text(errors="replace").strip().splitlines()[-3:])
            raise BuildError(f"building crun for {arch.value} failed ({e}): {tail}",
                             hint=f"full log: {kept}") from None
    binary = tree / NAME
    run([f"{arch.cross_compile_prefix()}strip", "--strip-all", str(binary)])
    check_static(binary, arch)
    return binary
