"""The kernel image cache and the compile driver, with real files and a real make (a tiny
stand-in kernel tree whose Makefile behaves like kbuild's)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vz_linux.arch import Architecture
from vz_linux.build import kbuild, kernel_cache
from vz_linux.build.kernel import CompileProgress, compile_kernel
from vz_linux.build.reproducible import kbuild_env, kbuild_identity
from vz_linux.build.sources import KernelSource
from vz_linux.bundle.metadata import KernelSourceInfo, ToolchainInfo
from vz_linux.errors import BuildError
from vz_linux.profiles import KernelProfile

TOOLCHAIN = ToolchainInfo(compiler="gcc (Debian 12.2.0-14) 12.2.0", binutils="GNU ld 2.40", cross_compile="")
EPOCH = 1795859651
SOURCE = KernelSourceInfo(kind="tarball", version="6.1.7", sha256="a" * 64, origin="/x/linux.tar.xz")


def _key(**over: object) -> str:
    args: dict[str, object] = {"config_text": "CONFIG_A=y\n", "source_identity": "src", "toolchain": TOOLCHAIN,
                               "schema": "1", "arch": Architecture.x86_64, "build_env": kbuild_identity(EPOCH)}
    args.update(over)
    return kernel_cache.cache_key(**args)  # type: ignore[arg-type]


def test_key_covers_every_input() -> None:
    base = _key()
    others = [
        _key(config_text="CONFIG_A=n\n"),
        _key(source_identity="other"),
        _key(toolchain=TOOLCHAIN.model_copy(update={"compiler": "gcc (Debian 12.2.0-15) 12.2.0"})),
        _key(toolchain=TOOLCHAIN.model_copy(update={"binutils": "GNU ld 2.41"})),
        _key(schema="2"),
        _key(arch=Architecture.arm64),
        _key(build_env=kbuild_identity(EPOCH + 1)),  # another build epoch: other bytes
        _key(cflags=("-mstringop-strategy=unrolled_loop",)),  # other compiler flags
        _key(cflags=("-O1",)),
    ]
    assert len({base, *others}) == 1 + len(others)
    assert _key() == base == _key(cflags=())  # deterministic; no flags: the key as before


def test_only_x86_64_kernels_get_compiler_flags_next_to_the_prefix_maps(tmp_path: Path) -> None:
    """x86_64's inlined `rep stosb`/`rep movsb` (a byte per TCG step) become unrolled loops; arm64
    gets no flags, so its key (and its cached kernel) stays. The flags join KCFLAGS, they do not
    replace the reproducible build's prefix maps."""
    assert kbuild.arch_cflags(Architecture.arm64) == ()
    assert kbuild.arch_cflags(Architecture.x86_64) == ("-mstringop-strategy=unrolled_loop",)
    env = kbuild_env(tmp_path / "tree", tmp_path / "b", EPOCH, kbuild.arch_cflags(Architecture.x86_64))
    assert env["KCFLAGS"].split() == [f"-ffile-prefix-map={(tmp_path / 'tree').resolve()}=.",
                                      f"-ffile-prefix-map={(tmp_path / 'b').resolve()}=.",
                                      "-mstringop-strategy=unrolled_loop"]


def test_store_lookup_and_damaged_entry(tmp_path: Path) -> None:
    image = tmp_path / "vmlinux"
    image.write_bytes(b"\x7fELF" + b"k" * 1000)
    root = tmp_path / "kernels"
    key = _key()
    assert kernel_cache.lookup(key, Architecture.x86_64, root) is None
    entry = kernel_cache.store(key=key, arch=Architecture.x86_64, image=image, config_text="CONFIG_A=y\n",
                               release="6.1.7-vz-container", version="6.1.7", source=SOURCE,
                               toolchain=TOOLCHAIN, root=root)
    assert entry.dir == root / key and entry.image.read_bytes() == image.read_bytes()
    assert entry.config_path.read_text() == "CONFIG_A=y\n"
    meta = json.loads((entry.dir / "kernel.json").read_text())
    assert meta["release"] == "6.1.7-vz-container" and meta["toolchain"]["binutils"] == "GNU ld 2.40"
    assert [p.name for p in root.iterdir()] == [key]  # no staging dir left behind
    hit = kernel_cache.lookup(key, Architecture.x86_64, root)
    assert hit is not None and hit.release == "6.1.7-vz-container"
    # A corrupted image is a miss, and storing again repairs the entry.
    entry.image.write_bytes(b"garbage")
    assert kernel_cache.lookup(key, Architecture.x86_64, root) is None
    kernel_cache.store(key=key, arch=Architecture.x86_64, image=image, config_text="CONFIG_A=y\n",
                       release="6.1.7-vz-container", version="6.1.7", source=SOURCE, toolchain=TOOLCHAIN, root=root)
    assert kernel_cache.lookup(key, Architecture.x86_64, root) is not None


FAKE_MAKEFILE = """\
# Stands in for the kernel's top Makefile: kbuild-style lines, out of tree in $(O).
VERSION = 6
PATCHLEVEL = 1
SUBLEVEL = 7
vmlinux:
\t@for i in $$(seq 1 250); do echo "  CC      obj$$i.o"; done
\t@echo "  LD      vmlinux"
\t@if grep -q CONFIG_BREAK=y $(O)/.config; then echo "obj7.c:1: error: planted failure" >&2; exit 2; fi
\t@mkdir -p $(O)/include/config
\t@echo 6.1.7-vz-container > $(O)/include/config/kernel.release
\t@printf '\\177ELF-fake' > $(O)/vmlinux
\t@echo "$$KBUILD_BUILD_TIMESTAMP|$$KBUILD_BUILD_USER|$$KBUILD_BUILD_HOST|$$KBUILD_BUILD_VERSION|$$SOURCE_DATE_EPOCH|$$KCFLAGS" > $(O)/env.txt
"""


@pytest.fixture
def fake_tree(tmp_path: Path) -> KernelSource:
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "Makefile").write_text(FAKE_MAKEFILE)
    info = KernelSourceInfo(kind="tree", version="6.1.7", sha256=None, origin=str(tree))
    return KernelSource(tree=tree, info=info)


def test_compile_reports_progress_and_keeps_the_log(fake_tree: KernelSource, tmp_path: Path) -> None:
    seen: list[CompileProgress] = []
    builddir = tmp_path / "build"
    (builddir / "usr").mkdir(parents=True)
    (builddir / "usr" / "initramfs_data.cpio").write_bytes(b"stale, with the last build's mtimes")
    result = compile_kernel(fake_tree, "CONFIG_A=y\n", KernelProfile.container, Architecture.x86_64,
                            epoch=EPOCH, builddir=builddir, jobs=2, progress=seen.append)
    assert result.release == "6.1.7-vz-container"
    assert result.image == builddir / "vmlinux" and result.image.read_bytes() == b"\x7fELF-fake"
    assert result.objects == 251 and [p.done for p in seen] == list(range(1, 252))
    assert seen[-1].line == "LD      vmlinux" and seen[-1].total >= 251
    log = result.log_path.read_text()
    assert "-j2" in log.splitlines()[0] and "CC      obj250.o" in log
    # The next build's estimate is this build's real count.
    assert (builddir / ".vz-linux-objects").read_text().strip() == "251"
    # The reproducible environment reached the kernel's make; the stale built-in initramfs is gone.
    stamp, user, host, version, epoch, kcflags = (builddir / "env.txt").read_text().strip().split("|")
    assert (stamp, user, host, version, epoch) == ("Sat Nov 28 09:54:11 UTC 2026", "vz-linux", "vz-linux", "1", str(EPOCH))
    assert kcflags.split() == [f"-ffile-prefix-map={fake_tree.tree.resolve()}=.", f"-ffile-prefix-map={builddir.resolve()}=.",
                               "-mstringop-strategy=unrolled_loop"]  # x86_64's own flag reached the compiler
    assert not (builddir / "usr" / "initramfs_data.cpio").exists()


def test_compile_failure_shows_the_log_tail(fake_tree: KernelSource, tmp_path: Path) -> None:
    with pytest.raises(BuildError) as e:
        compile_kernel(fake_tree, "CONFIG_BREAK=y\n", KernelProfile.container, Architecture.x86_64,
                       epoch=EPOCH, builddir=tmp_path / "build")
    msg = str(e.value)
    assert "exit code 2" in msg and str(tmp_path / "build" / "build.log") in msg
    assert "obj7.c:1: error: planted failure" in msg
    assert "planted failure" in (tmp_path / "build" / "build.log").read_text()
