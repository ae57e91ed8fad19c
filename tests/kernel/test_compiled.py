"""The real compiled kernels, through the cache (compiled once per machine, ~10+ min each on 2
cores; a machine whose cache holds them compiles nothing)."""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from pathlib import Path

import pytest

from vz_linux.arch import Architecture
from vz_linux.build import kernel_cache
from vz_linux.build.pipeline import BuildOptions, build_bundle
from vz_linux.build.reproducible import BUILD_HOST, BUILD_USER, build_epoch, build_timestamp
from vz_linux.build.sources import select_pin
from vz_linux.dotconfig import parse_dotconfig
from vz_linux.profiles import KernelProfile

pytestmark = [pytest.mark.kernel, pytest.mark.slow]

XEN_ELFNOTE_PHYS32_ENTRY = 18  # the PVH entry point note QEMU and Firecracker look for


def elf_notes(path: Path) -> list[tuple[bytes, int, bytes]]:
    """(name, type, desc) of every note in the PT_NOTE segments of a 64-bit little-endian ELF."""
    data = path.read_bytes()
    assert data[:4] == b"\x7fELF" and data[4] == 2 and data[5] == 1, "not an ELF64 LSB file"
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    notes = []
    for i in range(phnum):
        p_type, _flags, p_offset, _va, _pa, p_filesz = struct.unpack_from("<IIQQQQ", data, phoff + i * phentsize)
        if p_type != 4:  # PT_NOTE
            continue
        off, end = p_offset, p_offset + p_filesz
        while off + 12 <= end:
            namesz, descsz, ntype = struct.unpack_from("<III", data, off)
            off += 12
            name = data[off:off + namesz].rstrip(b"\0")
            off += (namesz + 3) & ~3
            desc = data[off:off + descsz]
            off += (descsz + 3) & ~3
            notes.append((name, ntype, desc))
    return notes


def test_container_x86_64_vmlinux_is_elf_with_pvh_note(built_kernel: Callable[..., object]) -> None:
    result = built_kernel(KernelProfile.container, Architecture.x86_64)
    kernel = result.kernel  # type: ignore[attr-defined]
    vmlinux = result.bundle_dir / "vmlinux"  # type: ignore[attr-defined]
    assert vmlinux.read_bytes() == kernel.image_path.read_bytes()
    notes = elf_notes(vmlinux)
    assert any(name == b"Xen" and ntype == XEN_ELFNOTE_PHYS32_ENTRY for name, ntype, _ in notes), notes
    assert kernel.release == f"{kernel.version}-vz-container"
    assert kernel.capabilities == KernelProfile.container.contract
    # The cache entry holds the exact config that was checked.
    entry = kernel_cache.lookup(kernel.cache_key, Architecture.x86_64)
    assert entry is not None and entry.config_path.read_text() == kernel.config_text
    assert parse_dotconfig(kernel.config_text)["PVH"] == "y"


@pytest.mark.parametrize("arch", list(Architecture))
def test_compiled_kernel_carries_no_build_path_time_or_host(built_kernel: Callable[..., object],
                                                              arch: Architecture) -> None:
    result = built_kernel(KernelProfile.container, arch)
    kernel = result.kernel  # type: ignore[attr-defined]
    data = kernel.image_path.read_bytes()
    # -ffile-prefix-map: neither the extracted source tree nor the build dir leaks into the image.
    assert str(kernel_cache.kernels_root().parent).encode() not in data
    # The banner has the pinned epoch, user and host, not the wall clock or this machine.
    epoch = build_epoch(select_pin())
    banner = f"({BUILD_USER}@{BUILD_HOST})".encode() + b" "
    assert banner in data and f"#1 SMP {build_timestamp(epoch)}".encode() in data


def test_container_arm64_image(built_kernel: Callable[..., object]) -> None:
    result = built_kernel(KernelProfile.container, Architecture.arm64)
    image = result.bundle_dir / "vmlinux"  # type: ignore[attr-defined]
    head = image.read_bytes()[:64]
    assert head[56:60] == b"ARM\x64", "not an arm64 Image (magic at 0x38)"
    assert result.kernel.capabilities == KernelProfile.container.contract  # type: ignore[attr-defined]


def test_cache_hit_runs_no_kernel_make(built_kernel: Callable[..., object], tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    built_kernel(KernelProfile.container, Architecture.x86_64)  # make sure the cache holds it
    # A `make` shim first on PATH that refuses every make of the kernel tree: a cache hit must not
    # notice it (the resolved config of unchanged inputs is memoized, the image comes from the cache).
    shim_dir = tmp_path / "bin"
    shim_dir.mkdir()
    calls = tmp_path / "make-calls"
    shim = shim_dir / "make"
    shim.write_text(
        "#!/bin/sh\n"
        f'echo "$*" >> {calls}\n'
        'echo "make of the kernel forbidden" >&2\n'
        "exit 97\n"
    )
    shim.chmod(0o755)
    monkeypatch.setenv("PATH", f"{shim_dir}{os.pathsep}{os.environ['PATH']}")
    result = build_bundle(BuildOptions(profile=KernelProfile.container, arch=Architecture.x86_64,
                                       out_dir=tmp_path / "out", kernel_only=True))
    assert result.cache_hit and result.kernel_seconds == 0.0 and result.log_path is None
    assert not calls.exists(), calls.read_text()
    assert (tmp_path / "out" / "vmlinux").read_bytes() == result.kernel.image_path.read_bytes()
    # And --rebuild-kernel really goes to make (the shim refuses, so the build fails on it).
    from vz_linux.errors import BuildError

    with pytest.raises(BuildError, match="exit code 97"):
        build_bundle(BuildOptions(profile=KernelProfile.container, arch=Architecture.x86_64,
                                  out_dir=tmp_path / "out2", kernel_only=True, rebuild_kernel=True))


def test_cli_build_hits_the_cache(built_kernel: Callable[..., object], tmp_path: Path) -> None:
    import subprocess
    import sys

    built_kernel(KernelProfile.container, Architecture.x86_64)
    vz_linux = Path(sys.executable).parent / "vz-linux"
    out = tmp_path / "bundle"
    proc = subprocess.run([str(vz_linux), "build", "--profile", "container", "--arch", "x86_64",
                           "--kernel-only", "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "from cache" in proc.stdout and "userland NOT assembled" in proc.stdout
    assert elf_notes(out / "vmlinux")
    bad = subprocess.run([str(vz_linux), "build", "--profile", "bogus"], capture_output=True, text=True,
                         timeout=60)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "bogus" in bad.stderr
