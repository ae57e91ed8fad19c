"""The initramfs: reproducible bytes, what it contains, that its userland runs."""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from vz_linux.arch import Architecture
from vz_linux.build.busybox import APPLETS, Busybox
from vz_linux.build.cpio import DEFAULT_EPOCH, Archive, Compression, Entry, EntryKind, decompress
from vz_linux.build.initramfs import InitramfsInputs, check_kernel_unpacks, write_initramfs
from vz_linux.errors import BuildError, InitramfsCompressionError

from .userland_fixtures import ARCHES, cpio_listing, extract

MAX_COMPRESSED = 1_500_000


BUILD = (
    "import sys; from pathlib import Path\n"
    "from vz_linux.build.cpio import Compression\n"
    "from vz_linux.build.initramfs import InitramfsInputs, write_initramfs\n"
    "busybox, agent, src, out = map(Path, sys.argv[1:5])\n"
    "write_initramfs(InitramfsInputs(busybox=busybox, agent=agent, source_dir=src), out,\n"
    "                compression=Compression(sys.argv[5]))\n"
)


def _build_elsewhere(inputs: InitramfsInputs, out: Path, *, clock: str, tz: str, umask: int,
                     compression: Compression) -> bytes:
    """Build in a fresh process with its own wall clock (faketime), time zone and umask."""
    env = {k: v for k, v in os.environ.items() if k != "SOURCE_DATE_EPOCH"} | {"TZ": tz}
    subprocess.run(["faketime", clock, sys.executable, "-c", BUILD, str(inputs.busybox), str(inputs.agent),
                    str(inputs.source_dir), str(out), compression.value], env=env, check=True, timeout=120,
                   preexec_fn=lambda: os.umask(umask))
    return out.read_bytes()


def newc_members(image: bytes) -> list[tuple[str, int, int, int]]:
    """(name, mtime, uid, gid) of every member of a newc archive (any compression), from its headers."""
    raw = decompress(image)
    out, pos = [], 0
    while True:
        assert raw[pos:pos + 6] == b"070701", f"no newc header at {pos}"
        fields = [int(raw[pos + 6 + 8 * i: pos + 14 + 8 * i], 16) for i in range(13)]
        size, namesize = fields[6], fields[11]
        name = raw[pos + 110: pos + 110 + namesize - 1].decode()
        if name == "TRAILER!!!":
            return out
        out.append((name, fields[5], fields[2], fields[3]))
        pos += 110 + namesize
        pos += -pos % 4
        pos += size + (-size % 4)


@pytest.mark.parametrize("compression", list(Compression), ids=str)
def test_two_builds_are_byte_identical(host_inputs: InitramfsInputs, tmp_path: Path,
                                       compression: Compression) -> None:
    # Second build from copies in another place, with other mtimes, in another process with another
    # wall clock, time zone and umask: only content may matter.
    copies = tmp_path / "copies"
    shutil.copytree(host_inputs.source_dir, copies / "src")
    shutil.copyfile(host_inputs.busybox, copies / "busybox")
    shutil.copyfile(host_inputs.agent, copies / "agent")
    os.utime(copies / "busybox", (1, 1))
    other = InitramfsInputs(busybox=copies / "busybox", agent=copies / "agent", source_dir=copies / "src")
    a = _build_elsewhere(host_inputs, tmp_path / "a.img", clock="2031-05-06 07:08:09", tz="Asia/Kolkata",
                         umask=0o077, compression=compression)
    b = _build_elsewhere(other, tmp_path / "b.img", clock="2019-02-03 04:05:06", tz="America/Los_Angeles",
                         umask=0o022, compression=compression)
    assert a == b
    assert Compression.detect(a) is compression
    if compression is Compression.gzip:
        assert a[4:8] == b"\0\0\0\0"  # header mtime 0
    # Every member carries the pinned epoch and root ownership, whatever the clock said.
    members = newc_members(a)
    assert len(members) > 100
    assert {(mtime, uid, gid) for _, mtime, uid, gid in members} == {(DEFAULT_EPOCH, 0, 0)}


def test_changed_input_changes_bytes(host_inputs: InitramfsInputs, tmp_path: Path) -> None:
    base = write_initramfs(host_inputs, tmp_path / "base.img").read_bytes()
    src = tmp_path / "src"
    shutil.copytree(host_inputs.source_dir, src)
    with open(src / "init", "a") as f:
        f.write("# changed\n")
    changed = write_initramfs(replace(host_inputs, source_dir=src), tmp_path / "changed.img").read_bytes()
    assert changed != base
    later = write_initramfs(host_inputs, tmp_path / "later.img", mtime=DEFAULT_EPOCH + 1).read_bytes()
    assert later != base


def test_source_date_epoch_sets_every_mtime(host_inputs: InitramfsInputs, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1600000000")
    image = write_initramfs(host_inputs, tmp_path / "i.img")
    tree = extract(image, tmp_path / "x")
    mtimes = {p.lstat().st_mtime for p in [tree / "init", tree / "bin" / "busybox", tree / "sbin" / "vz-agent"]}
    assert mtimes == {1600000000}
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "yesterday")
    with pytest.raises(BuildError, match="SOURCE_DATE_EPOCH"):
        write_initramfs(host_inputs, tmp_path / "bad.img")
    assert not (tmp_path / "bad.img").exists()


def test_cpio_lists_what_init_needs(host_inputs: InitramfsInputs, tmp_path: Path) -> None:
    image = write_initramfs(host_inputs, tmp_path / "i.img")
    names = set(cpio_listing(image).split())
    needed = {"init", "bin/busybox", "sbin/vz-agent", "etc/resolv.conf", "etc/udhcpc.script",
              "dev/console", "dev/null", "proc", "sys", "tmp", "run", "mnt/lower", "mnt/root"}
    needed |= {f"bin/{a}" for a in ("sh", "mount", "umount", "ip", "udhcpc", "wget", "dmesg", "tail",
                                     "head", "chroot", "unshare", "nsenter", "mkdir", "cat", "ls", "sleep",
                                     "grep", "switch_root", "poweroff", "reboot", "sed", "cp", "rm")}
    assert needed <= names, sorted(needed - names)
    verbose = {line.split()[-1]: line for line in cpio_listing(image, verbose=True).splitlines()
               if "->" not in line}
    # Owned by root, the console a char device 5,1.
    assert verbose["dev/console"].startswith("crw-------") and "5,   1" in verbose["dev/console"]
    assert all(line.split()[2:4] == ["0", "0"] for line in verbose.values())
    assert verbose["init"].startswith("-rwxr-xr-x")


def test_entries_are_sorted_parents_first(host_inputs: InitramfsInputs, tmp_path: Path) -> None:
    names = cpio_listing(write_initramfs(host_inputs, tmp_path / "i.img")).split()
    assert names == sorted(names, key=lambda n: n.split("/"))
    seen: set[str] = set()
    for n in names:
        parent = n.rpartition("/")[0]
        assert not parent or parent in seen, f"{n} before its directory"
        seen.add(n)


def test_extracted_userland_runs(host_inputs: InitramfsInputs, tmp_path: Path) -> None:
    tree = extract(write_initramfs(host_inputs, tmp_path / "i.img"), tmp_path / "root")
    assert (tree / "sbin" / "vz-agent").read_bytes() == host_inputs.agent.read_bytes()
    assert os.readlink(tree / "bin" / "sh") == "busybox"
    out = subprocess.run(["chroot", str(tree), "/bin/sh", "-c", "echo $(uname -s) && ls /etc"],
                         capture_output=True, check=True, timeout=60).stdout.decode().split()
    assert out[0] == "Linux"
    assert {"resolv.conf", "udhcpc.script", "passwd"} <= set(out)
    version = subprocess.run(["chroot", str(tree), "/sbin/vz-agent", "--version"], capture_output=True,
                             timeout=60)
    assert version.returncode == 0


def test_applets_exist_in_busybox(busyboxes: dict[Architecture, Busybox]) -> None:
    host = busyboxes[Architecture.host()]
    listed = set(subprocess.run([str(host.path), "--list"], capture_output=True, check=True).stdout.decode().split())
    assert set(APPLETS) - listed == set()


@pytest.mark.parametrize("arch", ARCHES, ids=str)
def test_compressed_size_per_arch(arch: Architecture, busyboxes: dict[Architecture, Busybox],
                                  agents: dict[Architecture, Path], tmp_path: Path) -> None:
    inputs = InitramfsInputs.default(busybox=busyboxes[arch].path, agent=agents[arch])
    image = write_initramfs(inputs, tmp_path / "i.img", compression=Compression.gzip)
    assert image.stat().st_size < MAX_COMPRESSED
    # The arch's own binaries went in, not the host's.
    tree = extract(image, tmp_path / "x")
    desc = subprocess.run(["file", "-b", str(tree / "bin" / "busybox")], capture_output=True,
                          check=True).stdout.decode()
    assert ("aarch64" in desc) == (arch is Architecture.arm64) and "statically linked" in desc


def test_archive_rejects_bad_entries() -> None:
    ar = Archive()
    ar.add_dir("etc")
    with pytest.raises(BuildError, match="added twice"):
        ar.add_dir("etc")
    for bad in ("/etc/x", "etc/../x", "", "etc//x"):
        with pytest.raises(BuildError, match="bad initramfs path"):
            Entry(bad, EntryKind.FILE, 0o644)
    ar.add_file("usr/bin/x", b"x")
    with pytest.raises(BuildError, match="lacks parent directories: usr, usr/bin"):
        ar.to_cpio()


def test_newc_format_matches_cpio_reading(tmp_path: Path) -> None:
    # Odd lengths exercise the 4-byte padding of names and data.
    ar = Archive()
    ar.add_dir("d")
    ar.add_file("d/odd", b"abcde", 0o640)
    ar.add_symlink("d/link", "odd")
    ar.add_file("e", b"")
    img = tmp_path / "t.img"
    img.write_bytes(ar.to_gzip(mtime=5))
    tree = extract(img, tmp_path / "x")
    assert (tree / "d" / "odd").read_bytes() == b"abcde"
    assert (tree / "d" / "odd").stat().st_mode & 0o777 == 0o640
    assert os.readlink(tree / "d" / "link") == "odd"
    assert (tree / "e").read_bytes() == b""
    assert len(gzip.decompress(img.read_bytes())) % 512 == 0


def test_uncompressed_by_default_and_every_compression_round_trips(host_inputs: InitramfsInputs,
                                                                  tmp_path: Path) -> None:
    default = write_initramfs(host_inputs, tmp_path / "default.img").read_bytes()
    assert default[:6] == b"070701" and Compression.detect(default) is Compression.none
    for c in Compression:
        image = write_initramfs(host_inputs, tmp_path / f"{c}.img", compression=c).read_bytes()
        assert Compression.detect(image) is c
        assert decompress(image) == default  # the same archive inside
    # The lz4 image is in the kernel's legacy frame and Debian's lz4 reads it back.
    lz4 = (tmp_path / "lz4.img").read_bytes()
    assert subprocess.run(["lz4", "-d", "-c"], input=lz4, capture_output=True, check=True).stdout == default


def test_unknown_or_unpackable_compression_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InitramfsCompressionError, match="unknown initramfs compression 'zstd'") as e:
        Compression.parse("zstd")
    assert e.value.exit_code == 94
    assert Compression.parse("lz4") is Compression.lz4
    config = "CONFIG_BLK_DEV_INITRD=y\nCONFIG_RD_GZIP=y\n# CONFIG_RD_LZ4 is not set\n"
    with pytest.raises(InitramfsCompressionError, match="CONFIG_RD_LZ4 is not set"):
        check_kernel_unpacks(Compression.lz4, config)
    check_kernel_unpacks(Compression.gzip, config)
    check_kernel_unpacks(Compression.none, "")
    with pytest.raises(InitramfsCompressionError, match="neither a newc archive"):
        Compression.detect(b"BZh91AY&SY")
