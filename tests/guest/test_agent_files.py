"""`vz-agent --in-root ROOT --extract|--create` (guest/agent/files.c), run on the host on a temporary root.

Confinement is checked with absolute symlinks that name a real host directory: confined, a path
through them lands inside ROOT (where the same absolute path is created); escaped, it would land in
that host directory — which must stay empty.
"""

from __future__ import annotations

import errno
import io
import os
import platform
import struct
import subprocess
import tarfile
from pathlib import Path

import pytest


def agent(binary: Path, root: Path, mode: str, path: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([str(binary), "--in-root", str(root), mode, path], input=stdin,
                          capture_output=True, timeout=60)


# A kernel without openat2(2): a seccomp filter (classic BPF, loaded by bubblewrap) makes it fail
# with ENOSYS, so the agent takes its O_NOFOLLOW walk. openat2 is 437 on both arches.
_AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}[platform.machine()]
_SECCOMP_NO_OPENAT2 = b"".join(struct.pack("<HBBI", *insn) for insn in [
    (0x20, 0, 0, 4),            # ld  seccomp_data.arch
    (0x15, 0, 3, _AUDIT_ARCH),  # jeq the host's arch, else allow
    (0x20, 0, 0, 0),            # ld  seccomp_data.nr
    (0x15, 0, 1, 437),          # jeq __NR_openat2, else allow
    (0x06, 0, 0, 0x00050000 | errno.ENOSYS),  # ret SECCOMP_RET_ERRNO | ENOSYS
    (0x06, 0, 0, 0x7FFF0000),   # ret SECCOMP_RET_ALLOW
])


def agent_without_openat2(binary: Path, root: Path, mode: str, path: str,
                          stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    r, w = os.pipe()
    os.write(w, _SECCOMP_NO_OPENAT2)
    os.close(w)
    try:
        return subprocess.run(["bwrap", "--bind", "/", "/", "--dev", "/dev", "--seccomp", str(r), str(binary),
                               "--in-root", str(root), mode, path], input=stdin, capture_output=True,
                              timeout=60, pass_fds=(r,))
    finally:
        os.close(r)


def test_without_openat2_the_walk_refuses_symlinks_and_dotdot_instead(agent_binary: Path,
                                                                      places: tuple[Path, Path]) -> None:
    root, outside = places
    os.symlink(str(outside), root / "etc" / "esc")
    (root / str(outside).lstrip("/")).mkdir(parents=True)
    os.symlink("/", root / "etc" / "up")
    data = tar_of(("a.txt", tarfile.REGTYPE, b"hello"))
    for dest in ("/etc/esc/", "/etc/up/", "/etc/esc/sub", "/etc/../etc/"):
        p = agent_without_openat2(agent_binary, root, "--extract", dest, data)
        assert p.returncode == 3, (dest, p.returncode, p.stderr)
    assert list(outside.iterdir()) == [] and not (root / "a.txt").exists()
    # Plain paths still work, and a symlink is still archived as itself.
    p = agent_without_openat2(agent_binary, root, "--extract", "/etc/", data)
    assert p.returncode == 0, p.stderr
    assert (root / "etc" / "a.txt").read_bytes() == b"hello"
    p = agent_without_openat2(agent_binary, root, "--create", "/etc/esc")
    assert p.returncode == 0, p.stderr
    with tarfile.open(fileobj=io.BytesIO(p.stdout)) as t:
        (only,) = t.getmembers()
        assert only.issym() and only.linkname == str(outside)
    # The same requests with openat2 resolve the symlinks inside the root instead.
    assert agent(agent_binary, root, "--extract", "/etc/up/", data).returncode == 0
    assert (root / "a.txt").read_bytes() == b"hello"


def tar_of(*members: tuple[str, bytes, bytes | str]) -> bytes:
    """(name, type, data or link target) → a tar stream."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as t:
        for name, kind, payload in members:
            info = tarfile.TarInfo(name)
            info.type = kind
            if kind == tarfile.SYMTYPE:
                info.linkname = str(payload)
                t.addfile(info)
            else:
                data = payload if isinstance(payload, bytes) else payload.encode()
                info.size = len(data)
                t.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
    return out.getvalue()


@pytest.fixture
def places(tmp_path: Path) -> tuple[Path, Path]:
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "etc").mkdir(parents=True)
    outside.mkdir()
    return root, outside


def test_extract_through_a_symlink_pointing_outside_stays_in_the_root(agent_binary: Path,
                                                                      places: tuple[Path, Path]) -> None:
    root, outside = places
    os.symlink(str(outside), root / "etc" / "esc")  # absolute: outside on the host, inside the root
    (root / str(outside).lstrip("/")).mkdir(parents=True)  # ... where the same path exists
    os.symlink("../../../../../../..", root / "etc" / "up")
    data = tar_of(("a.txt", tarfile.REGTYPE, b"hello"))
    for dest in ("/etc/esc/", "/etc/up/", "/etc/up/../../"):
        p = agent(agent_binary, root, "--extract", dest, data)
        assert p.returncode == 0, p.stderr
    assert list(outside.iterdir()) == []
    assert (root / str(outside).lstrip("/") / "a.txt").read_bytes() == b"hello"  # the root's own copy
    assert (root / "a.txt").read_bytes() == b"hello"  # "up" and ".." stop at the root
    assert b"ack " in p.stdout  # the host's flow control relies on these


def test_extract_replaces_a_symlink_instead_of_writing_through_it(agent_binary: Path,
                                                                   places: tuple[Path, Path]) -> None:
    root, outside = places
    (outside / "victim").write_text("host file\n")
    os.symlink(str(outside / "victim"), root / "etc" / "f")
    p = agent(agent_binary, root, "--extract", "/etc/", tar_of(("f", tarfile.REGTYPE, b"new")))
    assert p.returncode == 0, p.stderr
    assert (outside / "victim").read_text() == "host file\n"
    assert not (root / "etc" / "f").is_symlink() and (root / "etc" / "f").read_bytes() == b"new"


@pytest.mark.parametrize("name", ["../escaped", "a/../../escaped", "/escaped"])
def test_hostile_member_names_are_refused(agent_binary: Path, places: tuple[Path, Path], name: str) -> None:
    root, outside = places
    p = agent(agent_binary, root, "--extract", "/etc/", tar_of((name, tarfile.REGTYPE, b"x")))
    assert p.returncode == 4, p.stderr
    assert b"refused" in p.stderr
    assert not any(root.rglob("escaped")) and list(outside.iterdir()) == []


def test_create_archives_symlinks_as_symlinks_and_never_follows_them(agent_binary: Path,
                                                                     places: tuple[Path, Path]) -> None:
    root, outside = places
    (outside / "secret").write_text("host secret\n")
    tree = root / "etc" / "tree"
    (tree / "d").mkdir(parents=True)
    (tree / "d" / "f").write_text("in the container\n")
    os.symlink(str(outside), tree / "out")  # a directory outside: not descended into
    os.symlink(str(outside / "secret"), root / "etc" / "link")
    p = agent(agent_binary, root, "--create", "/etc/tree")
    assert p.returncode == 0, p.stderr
    with tarfile.open(fileobj=io.BytesIO(p.stdout)) as t:
        members = {m.name: m for m in t.getmembers()}
        assert set(members) == {"tree", "tree/d", "tree/d/f", "tree/out"}
        assert members["tree/out"].issym() and members["tree/out"].linkname == str(outside)
        assert t.extractfile("tree/d/f").read() == b"in the container\n"  # type: ignore[union-attr]
    p = agent(agent_binary, root, "--create", "/etc/link")  # the top itself a symlink: archived as one
    with tarfile.open(fileobj=io.BytesIO(p.stdout)) as t:
        (only,) = t.getmembers()
        assert only.issym() and b"host secret" not in p.stdout


def test_create_of_a_missing_or_dotdot_path_fails_cleanly(agent_binary: Path, places: tuple[Path, Path]) -> None:
    root, _ = places
    assert agent(agent_binary, root, "--create", "/nope").returncode == 3
    p = agent(agent_binary, root, "--create", "/etc/..")
    assert p.returncode == 3 and p.stdout == b""


def test_extract_renames_the_top_entry_when_dest_does_not_exist(agent_binary: Path,
                                                                places: tuple[Path, Path]) -> None:
    root, _ = places
    data = tar_of(("src", tarfile.DIRTYPE, b""), ("src/x", tarfile.REGTYPE, b"1"))
    assert agent(agent_binary, root, "--extract", "/etc/new", data).returncode == 0
    assert (root / "etc" / "new" / "x").read_bytes() == b"1"
    p = agent(agent_binary, root, "--extract", "/missing/dir/", data)
    assert p.returncode == 3 and b"no such directory" in p.stderr
