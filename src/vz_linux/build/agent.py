"""Build the static guest agent (guest/agent/Makefile) for an architecture, cached by its inputs.

The cache key covers the agent's sources, the Makefile, the package's agent version and protocol
revision (passed to the compiler with -D; the build fails if protocol.h disagrees) and the
compiler's identity, so an unchanged agent is never rebuilt and a changed one always is.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from ..arch import Architecture
from ..errors import BuildError
from ..fsutil import publish_dir, publish_file
from ..hashing import cache_key, sha256_file
from ..layout import cache_root, source_checkout
from ..run import run
from ..version import AGENT_PROTOCOL_REVISION, AGENT_VERSION
from .kbuild import tool_identity

AGENT_BINARY = "vz-agent"
FUZZER_BINARY = "fuzz_decoder"
FUZZ_CC = "clang-14"


def agent_source_dir() -> Path:
    top = source_checkout()
    src = top / "guest" / "agent" if top is not None else None
    if src is None or not (src / "Makefile").is_file():
        raise BuildError("guest agent sources (guest/agent/) not found",
                         hint="build from a vz-linux source checkout")
    return src


def _source_digest(src: Path, *, fuzz: bool) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in src.rglob("*") if p.is_file()):
        rel = path.relative_to(src).as_posix()
        if rel.startswith(("build/", "fuzz/corpus/")) or (rel.startswith("fuzz/") and not fuzz):
            continue
        h.update(rel.encode() + b"\0" + sha256_file(path).encode() + b"\0")
    return h.hexdigest()


def agent_cache_key(arch: Architecture) -> str:
    return cache_key({
        "sources": _source_digest(agent_source_dir(), fuzz=False),
        "arch": arch.value,
        "version": AGENT_VERSION,
        "revision": AGENT_PROTOCOL_REVISION,
        "compiler": tool_identity(f"{arch.cross_compile_prefix()}gcc"),
    })[:20]


def _make(target: str, arch: Architecture, out: Path) -> None:
    src = agent_source_dir()
    prefix = arch.cross_compile_prefix()
    run(["make", "-C", src, target, f"ARCH={arch.value}", f"O={out}", f"VERSION={AGENT_VERSION}",
         f"REVISION={AGENT_PROTOCOL_REVISION}", f"CC_FOR_ARCH={prefix}gcc", f"STRIP_FOR_ARCH={prefix}strip"])


def _build_cached(key_dir: Path, binary: str, target: str, arch: Architecture) -> Path:
    result = key_dir / binary
    if result.is_file():
        return result
    # Built in a stage renamed into place: concurrent builders never see half a result, and the
    # first complete one wins.
    with publish_dir(key_dir, prefix=f".{key_dir.name}.") as stage:
        _make(target, arch, stage)
        if not (stage / binary).is_file():
            raise BuildError(f"make {target} did not produce {binary}")
    _prune(key_dir)
    return result


def _prune(keep: Path, *, generations: int = 3) -> None:
    """Drop all but the newest few builds of the same kind (each source change makes a new key)."""
    kind = keep.name.rsplit("-", 1)[0]
    builds = sorted((p for p in keep.parent.glob(f"{kind}-*") if p.is_dir() and p.name.rsplit("-", 1)[0] == kind),
                    key=lambda p: p.stat().st_mtime, reverse=True)
    for old in builds[generations:]:
        if old != keep:
            shutil.rmtree(old, ignore_errors=True)


def _install_copy(built: Path, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    dest = out_dir / built.name
    if dest.is_file() and sha256_file(dest) == sha256_file(built):
        return dest
    with publish_file(dest, mode=built.stat().st_mode & 0o7777) as tmp:
        shutil.copy2(built, tmp)
    return dest


def build_agent(arch: Architecture, out_dir: Path | None = None) -> Path:
    """Return the path of a static, stripped ``vz-agent`` for ``arch``.

    Built once per cache key under ``cache_root()/agent/``; with ``out_dir`` the binary is also
    copied there (only when it differs) and that copy is returned.
    """
    key_dir = cache_root() / "agent" / f"{arch.value}-{agent_cache_key(arch)}"
    built = _build_cached(key_dir, AGENT_BINARY, "all", arch)
    return built if out_dir is None else _install_copy(built, out_dir)


def build_fuzzer() -> Path:
    """The libFuzzer binary for the frame decoder (host only, clang-14 with ASan/UBSan)."""
    key = cache_key({"sources": _source_digest(agent_source_dir(), fuzz=True),
                     "compiler": tool_identity(FUZZ_CC)})
    key_dir = cache_root() / "agent" / f"fuzz-{key[:20]}"
    return _build_cached(key_dir, FUZZER_BINARY, "fuzz", Architecture.host())
