"""The reproducibility check (docs/reproducible.md): build the same inputs twice — the second
time from a copy of the checkout in another directory, as another user (uid 65534), with the clock
moved on — and compare every bundle file byte for byte, with ``diffoscope`` detail for any that
differ.

Each build runs ``vz-linux build`` from its own checkout copy (``PYTHONPATH=<copy>/src``) with its
own build cache. What the cache shares decides what is built twice: downloads and BusyBox are
always shared; the extracted kernel sources and the kernel image too unless ``kernel=True`` (then
each build extracts its own source tree and compiles the kernel in its own build dir; otherwise a
cache miss fails at once); the resolved-config memo is copied; the guest agent is always built twice; crun is built twice unless ``reuse_crun`` (the
CI-sized check of the assembly). Both builds use the caller's toolchain (kbuild pins no Rust
toolchain: :data:`kbuild.NO_RUST`): the check varies directory, user and time, not the toolchain.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .. import layout
from ..arch import Architecture
from ..errors import BuildError, NotReproducibleError
from ..hashing import sha256_file
from ..layout import cache_root, source_checkout
from ..profiles import KernelProfile
from ..run import run

OTHER_UID = 65534  # nobody
# Read access to the first build's checkout and the shared cache (under a 0700 home) as that user.
_SETPRIV = ["setpriv", f"--reuid={OTHER_UID}", f"--regid={OTHER_UID}", "--clear-groups",
            "--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search"]
_DETAIL_LIMIT = 12_000  # characters of diffoscope output per differing file


@dataclass(frozen=True)
class Variant:
    """One of the two builds."""

    name: str
    top: Path  # checkout copy
    cache: Path
    out: Path  # bundle dir
    home: Path
    other_user: bool = False
    clock_offset_days: int = 0


@dataclass(frozen=True)
class FileDiff:
    name: str
    sha_a: str | None
    sha_b: str | None
    detail: str


@dataclass
class DoubleBuild:
    a: Variant
    b: Variant
    seconds: dict[str, float] = field(default_factory=dict)
    compared: list[str] = field(default_factory=list)
    diffs: list[FileDiff] = field(default_factory=list)


def copy_checkout(top: Path, dest: Path) -> Path:
    """The checkout's tracked and untracked-but-not-ignored files (``git ls-files``) under ``dest``."""
    names = run(["git", "-C", str(top), "ls-files", "-z", "--cached", "--others", "--exclude-standard"]
                ).stdout.decode().split("\0")
    for name in filter(None, names):
        src = top / name
        if not src.is_file() and not src.is_symlink():
            continue  # deleted in the work tree
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest / name, follow_symlinks=False)
    return dest


# Cache parts shared with the machine's cache: fetched inputs, never build outputs under test.
_SHARED_INPUTS = ("downloads", "busybox")


def seed_cache(cache: Path, shared: Path, *, kernel: bool, reuse_crun: bool, kconfig: Path | None = None) -> None:
    """``kconfig``: where to copy the resolved-config memo from (default: the shared cache's)."""
    cache.mkdir(parents=True)
    names = [*_SHARED_INPUTS, *([] if kernel else ["kernels"])]
    for name in names:
        if (shared / name).exists():
            (cache / name).symlink_to(shared / name)
    if not kernel:
        # The kernel must come from the cache: a key miss fails at once instead of compiling for
        # half an hour (the kernel build dir cannot be made under a file).
        (cache / "build").write_text("userland-only double build: no kernel compiles here\n")
    # sources/ is ours (its memo file is rewritten). Without the kernel the extracted trees are
    # shared; with it each build extracts its own, so the kernel sees two source directories
    # (and another user runs the tree's scripts without borrowed rights).
    (cache / "sources").mkdir()
    for tree in [] if kernel else (shared / "sources").glob("linux-*"):
        if tree.is_dir():
            (cache / "sources" / tree.name).symlink_to(tree)
    memo = kconfig or shared / "kconfig"
    if memo.is_dir():
        shutil.copytree(memo, cache / "kconfig", symlinks=True)  # a memo: written to
    (cache / "crun").mkdir()
    for name in ("source", "sysroot", *(["bin"] if reuse_crun else [])):
        if (shared / "crun" / name).exists():
            (cache / "crun" / name).symlink_to(shared / "crun" / name)


def _chown_tree(root: Path, uid: int) -> None:
    for dirpath, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            os.lchown(os.path.join(dirpath, name), uid, uid)
    os.lchown(root, uid, uid)


def make_variants(work: Path) -> tuple[Variant, Variant]:
    """Build A in ``work/a``; build B deeper in ``work/b`` (another path length), as another user,
    ten days later."""
    a = Variant("a", work / "a" / "vz-linux", work / "a" / "cache", work / "a" / "out" / "container",
                work / "a" / "home")
    deep = work / "b" / "elsewhere" / "checkout-two"
    b = Variant("b", deep / "vz-linux", work / "b" / "cache", work / "b" / "out" / "container",
                work / "b" / "home", other_user=True, clock_offset_days=10)
    return a, b


def build_argv(v: Variant, profile: KernelProfile, arch: Architecture) -> list[str]:
    prefix = [*(_SETPRIV if v.other_user else []),
              *(["faketime", "-f", f"+{v.clock_offset_days}d"] if v.clock_offset_days else [])]
    return [*prefix, sys.executable, "-c", "from vz_linux.cli.main import main; main()", "build",
            "--profile", profile.value, "--arch", arch.value, "--out", str(v.out)]


def _env(v: Variant) -> dict[str, str]:
    env = {k: val for k, val in os.environ.items() if k not in ("SOURCE_DATE_EPOCH", "VZ_LINUX_CACHE_DIR")}
    return {**env, "PYTHONPATH": str(v.top / "src"),
            "VZ_LINUX_CACHE_DIR": str(v.cache), "HOME": str(v.home), "FAKETIME_DONT_FAKE_MONOTONIC": "1"}


def prepare(v: Variant, *, kernel: bool, reuse_crun: bool, kconfig: Path | None = None) -> None:
    top = source_checkout()
    if top is None:
        raise BuildError("the reproducibility check needs a vz-linux source checkout")
    copy_checkout(top, v.top)
    seed_cache(v.cache, cache_root(), kernel=kernel, reuse_crun=reuse_crun, kconfig=kconfig)
    v.home.mkdir(parents=True)
    v.out.parent.mkdir(parents=True)
    if v.other_user:
        if os.geteuid() != 0:
            raise BuildError("building as another user needs root (setpriv)")
        for d in (v.top.parents[1], v.cache, v.home, v.out.parent):
            _chown_tree(d, OTHER_UID)


def run_build(v: Variant, profile: KernelProfile, arch: Architecture, log: Path) -> float:
    started = time.monotonic()
    with open(log, "wb") as logf:
        proc = run(build_argv(v, profile, arch), env=_env(v), cwd=v.top, stdout=logf, stderr=logf, check=False)
    if proc.returncode != 0:
        tail = " | ".join(log.read_text(errors="replace").strip().splitlines()[-3:])
        raise BuildError(f"build {v.name} failed with exit code {proc.returncode}: {tail}", hint=f"log: {log}")
    return time.monotonic() - started


def built_files(v: Variant) -> dict[str, Path]:
    """What is compared: every bundle file, and the guest agent binary from the build's cache."""
    files = {name: v.out / name for name in layout.BUNDLE_FILES if (v.out / name).is_file()}
    for agent in sorted((v.cache / "agent").glob("*/vz-agent")):
        files[f"agent/{agent.parent.name.split('-', 1)[0]}/vz-agent"] = agent
    return files


def diffoscope_detail(a: Path, b: Path) -> str:
    proc = run(["diffoscope", "--text", "-", "--no-progress", str(a), str(b)], check=False, timeout=600)
    text = proc.stdout.decode(errors="replace")
    return text if len(text) <= _DETAIL_LIMIT else text[:_DETAIL_LIMIT] + f"\n… ({len(text)} characters)"


def compare(a: dict[str, Path], b: dict[str, Path]) -> tuple[list[str], list[FileDiff]]:
    names = sorted(set(a) | set(b))
    diffs: list[FileDiff] = []
    for name in names:
        sha_a = sha256_file(a[name]) if name in a else None
        sha_b = sha256_file(b[name]) if name in b else None
        if sha_a != sha_b:
            detail = diffoscope_detail(a[name], b[name]) if sha_a and sha_b else "only in one build"
            diffs.append(FileDiff(name, sha_a, sha_b, detail))
    return names, diffs


def double_build(work: Path, *, profile: KernelProfile = KernelProfile.container,
                 arch: Architecture | None = None, kernel: bool = False, reuse_crun: bool = False
                 ) -> DoubleBuild:
    """Build twice under ``work`` (which must not exist; its parents must be world-traversable)
    and compare; see the module docstring."""
    arch = arch or Architecture.host()
    # Build B's user reaches its own tree without capabilities (which() and access() ignore them):
    # ``work`` and its parents must be traversable by everyone.
    work.mkdir(parents=True)
    work.chmod(0o755)
    a, b = make_variants(work)
    result = DoubleBuild(a, b)
    prepare(a, kernel=kernel, reuse_crun=reuse_crun)
    result.seconds[a.name] = run_build(a, profile, arch, work / "build-a.log")
    prepare(b, kernel=kernel, reuse_crun=reuse_crun, kconfig=a.cache / "kconfig")
    result.seconds[b.name] = run_build(b, profile, arch, work / "build-b.log")
    result.compared, result.diffs = compare(built_files(a), built_files(b))
    return result


def raise_if_different(result: DoubleBuild) -> None:
    if result.diffs:
        raise NotReproducibleError(
            f"{len(result.diffs)} of {len(result.compared)} files differ between the two builds: "
            + ", ".join(d.name for d in result.diffs),
            hint="the diffoscope detail above shows where")


def describe(result: DoubleBuild) -> list[str]:
    lines = [f"{name}: {'DIFFERS' if any(d.name == name for d in result.diffs) else 'identical'}"
             for name in result.compared]
    for d in result.diffs:
        lines += [f"--- {d.name}: a {d.sha_a} b {d.sha_b}", d.detail]
    return lines

