"""Out-of-tree kernel compile per (profile, arch), and the description of a built kernel.

:class:`KernelInfo` is what the build hands to the userland stage (``assemble.assemble_bundle``)
and what ends up in ``version.json``.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from ..arch import Architecture
from ..bundle.metadata import KernelSourceInfo, ToolchainInfo
from ..dotconfig import parse_dotconfig
from ..errors import BuildError
from ..fsutil import write_text_if_changed
from ..layout import cache_root
from ..profiles import KernelCapability, KernelProfile
from ..run import quote, spawn
from .buildroot import current_identity
from .kbuild import arch_cflags, make_argv
from .reproducible import kbuild_env
from .sources import KernelSource


@dataclass(frozen=True)
class KernelInfo:
    version: str  # upstream version, e.g. "6.1.192"
    release: str  # uname -r, from include/config/kernel.release, e.g. "6.1.192-vz-container"
    config_text: str  # the resolved .config
    config_sha256: str
    cache_key: str
    source: KernelSourceInfo
    toolchain: ToolchainInfo
    capabilities: frozenset[KernelCapability]
    image_path: Path  # the cached image (Architecture.kernel_image_path's file)


# --- compile -----------------------------------------------------------------------------------
def build_dir(profile: KernelProfile, arch: Architecture, series: str) -> Path:
    """The persistent out-of-tree build dir of (profile, arch) for a kernel series: incremental
    across builds, and one per series so that both pins stay warm. A hermetic build has its own
    (its objects must come from the build root's compiler)."""
    hermetic = current_identity()
    suffix = f"-root-{hermetic[:12]}" if hermetic else ""
    return cache_root() / "build" / series / f"{profile.value}-{arch.value}{suffix}"


# First-build estimates of kbuild's object lines (replaced by the real count after one build).
_ESTIMATED_OBJECTS = {KernelProfile.container: 1900, KernelProfile.developer: 3800}
# kbuild's quiet output, one line per step: "  CC      kernel/fork.o", "  AR      lib/lib.a", "  LD      vmlinux".
_OBJECT_LINE = re.compile(r"^  [A-Z][A-Z0-9]+(?: \[M\])? +\S")


@dataclass(frozen=True)
class CompileProgress:
    done: int  # kbuild object lines seen so far
    total: int  # estimate (the last build's count, or a per-profile guess)
    elapsed: float  # seconds
    line: str  # the last line kbuild printed


ProgressFn = Callable[[CompileProgress], None]


@dataclass(frozen=True)
class CompileResult:
    image: Path  # inside the build dir
    release: str
    log_path: Path
    seconds: float
    objects: int


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _prepare(builddir: Path, config_text: str) -> None:
    # Unchanged text keeps the file's mtime, so make only rebuilds what changed.
    write_text_if_changed(builddir / ".config", config_text)
    # The built-in initramfs is only regenerated when its inputs change, and it carries mtimes.
    (builddir / "usr" / "initramfs_data.cpio").unlink(missing_ok=True)


def compile_kernel(
    source: KernelSource,
    config_text: str,
    profile: KernelProfile,
    arch: Architecture,
    *,
    epoch: int,
    builddir: Path | None = None,
    jobs: int | None = None,
    nice: int = 0,
    progress: ProgressFn | None = None,
) -> CompileResult:
    """Compile the kernel image of ``config_text`` out of tree in ``builddir``.

    Runs ``make -j<all cores> <arch.kernel_make_target>`` in the reproducible environment of
    ``epoch`` (:func:`reproducible.kbuild_env`); every line goes to ``<builddir>/build.log``; a
    failure raises :class:`BuildError` carrying the log's tail.
    """
    builddir = builddir or build_dir(profile, arch, source.series)
    builddir.mkdir(parents=True, exist_ok=True)
    log_path = builddir / "build.log"
    count_file = builddir / ".vz-linux-objects"
    try:
        total = int(count_file.read_text())
    except (OSError, ValueError):
        total = _ESTIMATED_OBJECTS[profile]
    jobs = jobs or os.cpu_count() or 1
    with FileLock(str(builddir) + ".lock"):
        _prepare(builddir, config_text)
        env = kbuild_env(source.tree, builddir, epoch, arch_cflags(arch))
        prefix = ["nice", "-n", str(nice)] if nice else []
        argv = [*prefix, *make_argv(source, builddir, arch, f"-j{jobs}", arch.kernel_make_target)]
        argv.remove("-s")  # keep kbuild's per-object lines: they drive the progress display
        start = time.monotonic()
        done = 0
        with open(log_path, "w", buffering=1) as log_file:  # line-buffered: `tail -f` works
            log_file.write(f"+ {' '.join(f'{k}={quote([v])}' for k, v in sorted(env.items()))} {quote(argv)}\n")
            log_file.flush()
            with spawn(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=builddir,
                       env=env) as proc:
                assert proc.stdout is not None
                for raw in proc.stdout:
                    text = raw.decode(errors="replace")
                    log_file.write(text)
                    if _OBJECT_LINE.match(text):
                        done += 1
                        if progress is not None:
                            progress(CompileProgress(done, max(total, done), time.monotonic() - start,
                                                     text.strip()))
                rc = proc.wait()
        seconds = time.monotonic() - start
        if rc != 0:
            raise BuildError(
                f"kernel compile of {profile}/{arch} failed with exit code {rc}; full log: {log_path}\n"
                + _tail(log_path),
                hint="see the log above; fix the fragment or the host toolchain and build again",
            )
        # make syncconfig may rewrite .config: what was compiled must be what was checked.
        if parse_dotconfig((builddir / ".config").read_text()) != parse_dotconfig(config_text):
            raise BuildError(f"{builddir}/.config changed during the build: the checked config was not compiled")
        if done > 200:  # a full build, not an incremental no-op: remember its size
            count_file.write_text(f"{done}\n")
        image = builddir / arch.kernel_image_path
        release = (builddir / "include" / "config" / "kernel.release").read_text().strip()
    return CompileResult(image=image, release=release, log_path=log_path, seconds=seconds, objects=done)
