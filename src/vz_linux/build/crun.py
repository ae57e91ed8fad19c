"""The bundle's OCI runtime: crun, built fully static from Debian's source package (SPEC §1, §8).

* Source: ``apt-get source crun=<pin>`` (deb-src is configured by scripts/setup.sh), unpacked
  with Debian's patches by ``dpkg-source -x``; any other version is refused.
* Libraries: the host arch links the installed ``-dev`` packages; another arch links a sysroot
  of that arch's ``.deb`` files fetched with ``apt-get download`` and unpacked with
  ``dpkg-deb -x`` (installing ``:arm64`` dev packages would remove the amd64 ones).
* Recipe (measured here): ``./configure --disable-systemd``, ``git-version.h`` written first,
  ``make crun`` with ``LDFLAGS=-all-static``, yajl's static archive (Debian names it
  ``libyajl_s.a``; exposed as ``libyajl.a``) and ``-lgpg-error`` after libgcrypt.
* The stripped binary is cached under a key over source version + arch + toolchain + library
  versions, so it is built once per machine; ``file`` must call it statically linked.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..arch import Architecture
from ..errors import BuildError, CommandFailedError
from ..hashing import sha256_file, sha256_text
from ..layout import cache_root, source_checkout
from ..run import run

NAME = "crun"
PINNED_VERSION = "1.8.1-1+deb12u1"  # bookworm's crun source package
CACHE_SCHEMA = 1
# -dev packages crun links statically, and the runtime packages holding their .a/.so siblings.
LIBRARY_PACKAGES: tuple[str, ...] = (
    "libcap-dev", "libcap2", "libgcrypt20", "libgcrypt20-dev", "libgpg-error-dev", "libgpg-error0",
    "libseccomp-dev", "libseccomp2", "libyajl-dev", "libyajl2",
)
_FILE_MACHINE = {Architecture.x86_64: "x86-64", Architecture.arm64: "ARM aarch64"}


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


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    """One crun build/fetch at a time per machine; the others then find the cache filled."""
    _root().mkdir(parents=True, exist_ok=True)
    with open(_root() / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


# --- source -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CrunSource:
    tree: Path
    version: str
    dsc_sha256: str  # covers the orig tarball and the Debian patches (the .dsc lists their hashes)


def fetch_source(version: str = PINNED_VERSION) -> CrunSource:
    if version != PINNED_VERSION:
        raise BuildError(f"crun {version} is not the pinned version {PINNED_VERSION}; refusing to build it")
    with _locked():
        return _fetch_source(version)


def _fetch_source(version: str) -> CrunSource:
    dest = _root() / "source" / version
    if (dest / "tree").is_dir() and (dest / "dsc.sha256").is_file():
        return CrunSource(dest / "tree", version, (dest / "dsc.sha256").read_text().strip())
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".fetch-") as tmp:
        work = Path(tmp)
        try:
            run(["apt-get", "source", "--download-only", f"{NAME}={version}"], cwd=work)
        except CommandFailedError as e:
            raise BuildError(
                f"cannot fetch Debian's crun source {version}: {e}",
                hint="scripts/setup.sh adds the deb-src entry; only the pinned version is accepted",
            ) from None
        dscs = list(work.glob("*.dsc"))
        if len(dscs) != 1:
            raise BuildError(f"apt-get source crun={version} gave {len(dscs)} .dsc files")
        # dpkg-source checks every file against the .dsc's checksums and applies Debian's patches.
        run(["dpkg-source", "-x", str(dscs[0]), str(work / "tree")])
        got = run(["dpkg-parsechangelog", "-l", str(work / "tree" / "debian" / "changelog"),
                   "-S", "Version"]).stdout.decode().strip()
        if got != version:
            raise BuildError(f"crun source is {got}, expected the pinned {version}")
        (work / "dsc.sha256").write_text(sha256_file(dscs[0]) + "\n")
        if dest.exists():
            shutil.rmtree(dest)
        staged = work / "staged"
        staged.mkdir()
        (work / "tree").rename(staged / "tree")
        (work / "dsc.sha256").rename(staged / "dsc.sha256")
        staged.rename(dest)
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
    names = [f"{p}:{arch.debian_arch}" for p in LIBRARY_PACKAGES]
    proc = run(["dpkg-query", "-W", "-f", "${Package}\t${Status}\t${Version}\n", *names], check=False)
    versions = {}
    for line in proc.stdout.decode().splitlines():
        pkg, status, version = line.split("\t")
        if "install ok installed" in status:
            versions[pkg] = version
    missing = sorted(set(LIBRARY_PACKAGES) - set(versions))
    if missing:
        raise BuildError(f"crun needs {', '.join(missing)} installed", hint="run scripts/setup.sh")
    return versions


def _candidate_versions(arch: Architecture) -> dict[str, str]:
    names = [f"{p}:{arch.debian_arch}" for p in LIBRARY_PACKAGES]
    out = run(["apt-cache", "show", "--no-all-versions", *names], check=False).stdout.decode()
    versions = dict(re.findall(r"^Package: (\S+)\n(?:.*\n)*?Version: (\S+)$", out, re.M))
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
    key = sha256_text(json.dumps(versions, sort_keys=True))[:16]
    dest = _root() / "sysroot" / arch.value / key
    if (dest / "usr").is_dir():
        return Libraries(dest, versions)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".fetch-") as tmp:
        work = Path(tmp)
        debs = work / "debs"
        debs.mkdir()
        run(["apt-get", "download", *(f"{p}:{arch.debian_arch}={v}" for p, v in sorted(versions.items()))],
            cwd=debs)
        tree = work / "sysroot"
        for deb in sorted(debs.glob("*.deb")):
            run(["dpkg-deb", "-x", str(deb), str(tree)])
        tree.rename(dest)
    return Libraries(dest, versions)


# --- build ----------------------------------------------------------------------------------------------
def toolchain_identity(arch: Architecture) -> str:
    gcc = f"{arch.cross_compile_prefix()}gcc"
    return run([gcc, "--version"]).stdout.decode().splitlines()[0].strip()


def patches() -> list[Path]:
    """Our patches on top of Debian's (guest/crun/patches/*.patch, applied in name order)."""
    top = source_checkout()
    return sorted((top / "guest" / "crun" / "patches").glob("*.patch")) if top is not None else []


def cache_key(source: CrunSource, arch: Architecture, toolchain: str, libs: Libraries) -> str:
    return sha256_text(json.dumps({
        "schema": CACHE_SCHEMA, "source": source.version, "dsc": source.dsc_sha256,
        "arch": arch.value, "toolchain": toolchain, "libraries": libs.versions,
        "patches": [(p.name, sha256_file(p)) for p in patches()],
    }, sort_keys=True))


def ensure_crun(arch: Architecture, version: str = PINNED_VERSION) -> OciRuntime:
    """The static crun for ``arch`` from the cache, building it (minutes) on a miss."""
    source = fetch_source(version)
    with _locked():
        libs = get_libraries(arch)
        toolchain = toolchain_identity(arch)
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
    if "statically linked" not in desc or _FILE_MACHINE[arch] not in desc:
        raise BuildError(f"{binary} is not a static {arch.value} ELF: {desc}")
    return desc


def _build(source: CrunSource, arch: Architecture, libs: Libraries, out_dir: Path) -> None:
    started = time.monotonic()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir.parent, prefix=f".build-{out_dir.name[:12]}-") as tmp:
        work = Path(tmp)
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
        configure = ["./configure", "--disable-systemd", "--enable-static", "--disable-shared",
                     f"LDFLAGS={ldflags}"]
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
        staged = work / "out"
        staged.mkdir()
        shutil.copy2(binary, staged / NAME)
        (staged / "build.json").write_text(json.dumps({
            "version": source.version, "arch": arch.value, "seconds": round(time.monotonic() - started, 1),
            "libraries": libs.versions,
        }, indent=2, sort_keys=True) + "\n")
        staged.rename(out_dir)
