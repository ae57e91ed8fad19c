"""Hermetic builds (docs/reproducible.md, "Hermetic builds"): a Debian build root made by
``mmdebstrap`` from the host's configured Debian mirror, entered with ``bubblewrap``.

* :class:`BuildRootSpec` is the root's identity: suite, apt source lines, architectures and the
  package list. Its hash names the cache entry ``cache_root()/buildroot/<key>/`` (``root/``, the
  package ``manifest.txt`` from ``dpkg-query`` in the root, ``buildroot.json``).
* :func:`ensure_root` makes the root once (minutes, hundreds of MB), staged and renamed into
  place, so a reader sees a whole root or none.
* :func:`enter_argv` is the one place ``bwrap`` is spelled: the root read-only as ``/``, a fresh
  ``/tmp``, ``/proc`` and ``/dev``, the network unshared, and bind mounts for the source checkout
  and the build cache (read-write) and the Python driver (read-only: the checkout's ``.venv``
  and its interpreter; the compilers, linkers, make and libraries all come from the root).
* Inside, :data:`IDENTITY_ENV` carries the manifest's sha256; :func:`current_identity` reads it,
  and the kernel cache key includes it (``pipeline.build_kernel``), so a hermetic kernel never
  shares a cache entry with a host-built one while host builds keep their keys.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from .. import hashing
from ..errors import BuildRootError, CommandFailedError, ToolMissingError
from ..fsutil import publish_dir
from ..hashing import sha256_text
from ..layout import cache_root, source_checkout
from ..run import run
from .sources import read_pin

SUITE = "bookworm"
ARCHITECTURES: tuple[str, ...] = ("amd64", "arm64")  # arm64: apt lists for the cross sysroots
SCHEMA = 1  # bump when the way a root is made changes
IDENTITY_ENV = "VZ_LINUX_BUILDROOT"  # the manifest sha256, set inside the root
# What `vz-linux build` needs inside the root: the kernel build, the cross toolchain, the static
# userland (agent, crun, busybox) and the tools the build calls. The kernel source package of the
# pin is added by default_spec().
PACKAGES: tuple[str, ...] = (
    "build-essential", "flex", "bison", "bc", "libelf-dev", "libssl-dev", "openssl", "cpio",
    "xz-utils", "zstd", "kmod", "gcc-aarch64-linux-gnu", "binutils-aarch64-linux-gnu",
    "libc6-dev-arm64-cross", "busybox-static", "file", "dpkg-dev", "pkg-config", "patch",
    "libyajl-dev", "libseccomp-dev", "libcap-dev", "libgcrypt20-dev", "libgpg-error-dev",
    "python3", "make", "ca-certificates",
)
HOST_SOURCES = Path("/etc/apt/sources.list.d")
_MANIFEST = "manifest.txt"
_META = "buildroot.json"


@dataclass(frozen=True)
class BuildRootSpec:
    suite: str
    mirrors: tuple[str, ...]  # one-line apt sources ("deb <uri> <suite> <components>")
    packages: tuple[str, ...]
    architectures: tuple[str, ...] = ARCHITECTURES
    variant: str = "apt"

    def key(self) -> str:
        return hashing.cache_key({"schema": SCHEMA, "suite": self.suite, "mirrors": list(self.mirrors),
                                  "packages": sorted(set(self.packages)), "arch": list(self.architectures),
                                  "variant": self.variant})[:16]


@dataclass(frozen=True)
class BuildRoot:
    dir: Path  # the cache entry
    spec_key: str
    manifest_sha256: str
    seconds: float | None  # how long mmdebstrap took for this entry
    size_bytes: int | None

    @property
    def root(self) -> Path:
        return self.dir / "root"

    @property
    def manifest(self) -> Path:
        return self.dir / _MANIFEST


def host_mirrors(sources_dir: Path = HOST_SOURCES, suite: str = SUITE) -> tuple[str, ...]:
    """The host's configured binary Debian sources for ``suite`` (deb822 ``*.sources`` files), as
    one-line entries; the root gets the same mirror as the host."""
    lines: list[str] = []
    for path in sorted(sources_dir.glob("*.sources")):
        for stanza in re.split(r"\n\s*\n", path.read_text()):
            fields = dict(re.findall(r"^([A-Za-z-]+):\s*(.*)$", stanza, re.M))
            if "deb" not in fields.get("Types", "").split() or fields.get("Enabled", "yes") == "no":
                continue
            for uri in fields.get("URIs", "").split():
                for s in fields.get("Suites", "").split():
                    if s == suite or s.startswith(suite + "-"):
                        lines.append(f"deb {uri} {s} {fields.get('Components', 'main')}")
    if not lines:
        raise BuildRootError(f"no Debian {suite} mirror configured in {sources_dir}",
                             hint="the build root uses the host's apt sources (deb822 .sources)")
    return tuple(lines)


def default_spec(kernel_packages: Sequence[str] = ()) -> BuildRootSpec:
    return BuildRootSpec(suite=SUITE, mirrors=host_mirrors(), packages=(*PACKAGES, *kernel_packages))


def roots_dir() -> Path:
    return cache_root() / "buildroot"


def _load(entry: Path) -> BuildRoot | None:
    try:
        meta = json.loads((entry / _META).read_text())
        manifest = (entry / _MANIFEST).read_text()
        if sha256_text(manifest) != meta["manifest_sha256"] or not (entry / "root" / "usr").is_dir():
            return None
        return BuildRoot(entry, meta["key"], meta["manifest_sha256"], meta.get("seconds"), meta.get("size_bytes"))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def lookup(spec: BuildRootSpec) -> BuildRoot | None:
    return _load(roots_dir() / spec.key())


def manifest_of(root: Path) -> str:
    """``package:arch<TAB>version`` of every installed package in ``root``, sorted."""
    out = run(["dpkg-query", f"--admindir={root / 'var/lib/dpkg'}", "-W",
               "-f", "${db:Status-Status}\t${Package}:${Architecture}\t${Version}\n"]).stdout.decode()
    rows = sorted(line.split("\t", 1)[1] for line in out.splitlines() if line.startswith("installed\t"))
    return "".join(row + "\n" for row in rows)


def _tree_size(root: Path) -> int:
    return int(run(["du", "-s", "-B1", str(root)]).stdout.split()[0])


def mmdebstrap_argv(spec: BuildRootSpec, target: Path) -> list[str]:
    return ["mmdebstrap", "--mode=root", f"--variant={spec.variant}",
            f"--architectures={','.join(spec.architectures)}",
            f"--include={','.join(sorted(set(spec.packages)))}",
            # apt's lists stay: the build asks apt-cache which arm64 packages to unpack.
            "--skip=cleanup/apt/lists", "--aptopt=Acquire::Languages \"none\"",
            spec.suite, str(target), *spec.mirrors]


def ensure_root(spec: BuildRootSpec, *, nice: int = 10, log: Path | None = None) -> BuildRoot:
    """The build root of ``spec`` from the cache, made with mmdebstrap on a miss."""
    dest = roots_dir() / spec.key()
    dest.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(dest) + ".lock"):
        found = _load(dest)
        if found is not None:
            return found
        if dest.exists():
            shutil.rmtree(dest)  # damaged (we hold the lock): make it again
        started = time.monotonic()
        with publish_dir(dest, prefix=".make-") as stage:
            argv = [*(["nice", "-n", str(nice)] if nice else []), *mmdebstrap_argv(spec, stage / "root")]
            try:
                with open(log or os.devnull, "wb") as logf:
                    run(argv, stdout=logf, stderr=logf)
            except (CommandFailedError, ToolMissingError) as e:
                raise BuildRootError(f"mmdebstrap could not make the {spec.suite} build root: {e}",
                                     hint="scripts/setup.sh installs mmdebstrap; the host's Debian mirror "
                                          "must answer" + (f"; log: {log}" if log else "")) from None
            manifest = manifest_of(stage / "root")
            (stage / _MANIFEST).write_text(manifest)
            (stage / _META).write_text(json.dumps({
                "key": spec.key(), "suite": spec.suite, "mirrors": list(spec.mirrors),
                "packages": sorted(set(spec.packages)), "architectures": list(spec.architectures),
                "manifest_sha256": sha256_text(manifest), "seconds": round(time.monotonic() - started, 1),
                "size_bytes": _tree_size(stage / "root"),
            }, indent=2, sort_keys=True) + "\n")
    made = _load(dest)
    if made is None:
        raise BuildRootError(f"build root {dest} is unreadable right after making it")
    return made


def current_identity() -> str | None:
    """The manifest sha256 of the build root we run in, or None on the host."""
    value = os.environ.get(IDENTITY_ENV, "")
    return value if re.fullmatch(r"[0-9a-f]{64}", value) else None


def _python_binds() -> list[Path]:
    """The Python driver: the interpreter's prefix when it is not the root's own /usr."""
    prefix = Path(sys.base_prefix).resolve()
    return [] if prefix == Path("/usr") else [prefix]


def enter_argv(root: BuildRoot, argv: Sequence[str], *, binds: Sequence[Path] = (),
               ro_binds: Sequence[Path] = (), cwd: Path | None = None,
               env: Mapping[str, str] | None = None) -> list[str]:
    """``bwrap`` argv running ``argv`` in ``root``: no network, no host toolchain, ``binds``
    read-write and ``ro_binds`` (plus the Python driver) read-only at the same paths."""
    # Bound read-write first so bwrap can make the bind mount points, then remounted read-only.
    out = ["bwrap", "--bind", str(root.root), "/", "--proc", "/proc", "--dev", "/dev",
           "--tmpfs", "/tmp", "--tmpfs", "/run", "--unshare-net", "--unshare-ipc", "--unshare-uts",
           "--unshare-pid", "--hostname", "vz-linux-buildroot", "--die-with-parent", "--clearenv"]
    for path in [*_python_binds(), *ro_binds]:
        out += ["--ro-bind", str(path), str(path)]
    for path in binds:
        out += ["--bind", str(path), str(path)]
    out += ["--remount-ro", "/"]
    base_env = {"PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", "HOME": "/tmp", "LC_ALL": "C.UTF-8",
                "TZ": "UTC", IDENTITY_ENV: root.manifest_sha256, "VZ_LINUX_CACHE_DIR": str(cache_root())}
    for name, value in {**base_env, **(env or {})}.items():
        out += ["--setenv", name, value]
    if cwd is not None:
        out += ["--chdir", str(cwd)]
    return [*out, "--", *argv]


def checkout_binds() -> list[Path]:
    """What a hermetic build of this checkout writes to: the checkout and the build cache."""
    top = source_checkout()
    if top is None:
        raise BuildRootError("hermetic builds need a vz-linux source checkout")
    cache = cache_root()
    cache.mkdir(parents=True, exist_ok=True)
    return [top, cache]


def pinned_kernel_packages() -> tuple[str, ...]:
    """The Debian kernel source package of every pin (``linux/kernel-version*.mk``): the root holds
    them all, so choosing another pin does not make another root."""
    top = source_checkout()
    if top is None:
        return ()
    return tuple(sorted({read_pin(p).debian_package for p in (top / "linux").glob("kernel-version*.mk")}))


def run_hermetic(argv: Sequence[str], *, outputs: Sequence[Path] = (), log: Path | None = None) -> int:
    """Make (or reuse) the default build root and run ``argv`` in it with this checkout, the build
    cache and ``outputs`` (directories, made if missing) bound; returns the command's exit code
    (its output goes to ours)."""
    if current_identity() is not None:
        raise BuildRootError("already inside a build root")
    root = ensure_root(default_spec(pinned_kernel_packages()), log=log)
    binds = checkout_binds()
    for out in outputs:
        out.mkdir(parents=True, exist_ok=True)
        binds.append(out.resolve())
    proc = run(enter_argv(root, argv, binds=binds, cwd=binds[0]), check=False, capture=False)
    return proc.returncode
