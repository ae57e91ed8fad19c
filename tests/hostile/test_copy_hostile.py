"""`vz oci cp CONTAINER:PATH HOST` against a FAKE guest that sends crafted tar bytes (docs/security.md).

The fake is a stand-in supervisor on the container's socket (no VM): it answers ``copy_out`` with
the bytes a hostile guest could make its agent send. The real `vz` CLI must refuse each archive with
exit 76 and one line, leave nothing outside the destination — not even beside it (the staging
directory is gone) — and create nothing at the destination.
"""

from __future__ import annotations

import io
import os
import socket
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from vz_linux.errors import HostileArchiveError
from vz_linux.oci import copy, wire

from .conftest import CliRunner, plant, record

CID = "c0ffee000001"


def member(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", link: str = "",
           fmt: int = tarfile.GNU_FORMAT) -> bytes:
    info = tarfile.TarInfo(name)
    info.type, info.size, info.linkname, info.mode = kind, len(data), link, 0o644
    if kind in (tarfile.CHRTYPE, tarfile.BLKTYPE):
        info.devmajor, info.devminor = 1, 3
    return info.tobuf(format=fmt) + data + bytes(-len(data) % 512)


def archive(*members: bytes) -> bytes:
    return b"".join(members) + bytes(1024)


class FakeGuestSupervisor:
    """Serves one ``copy_out`` on the container's supervisor socket with crafted tar bytes."""

    def __init__(self, cdir: Path, payload: bytes) -> None:
        self.payload = payload
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(cdir / "supervisor.sock"))
        self.listener.listen(1)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return
        with conn:
            try:
                msg = wire.Reader(conn).json()
                assert msg is not None and msg["op"] == "copy_out"
                wire.send_json(conn, {"ok": True})
                wire.send_chunk(conn, self.payload)
                wire.send_end(conn)
                wire.send_json(conn, {"ok": True, "warnings": []})
            except OSError:
                pass  # the CLI refused the stream and hung up: expected

    def close(self) -> None:
        self.listener.close()
        self.thread.join(5)


@pytest.fixture
def fake_guest(data_dir: Path) -> Iterator[Callable[[bytes], None]]:
    servers: list[FakeGuestSupervisor] = []

    def serve(payload: bytes) -> None:
        cdir = plant(data_dir, CID, record(CID, name="evil", status="running", exit_code=None))
        servers.append(FakeGuestSupervisor(cdir, payload))

    yield serve
    for s in servers:
        s.close()


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


HOSTILE: dict[str, Callable[[Path], bytes]] = {  # case → the crafted archive, given a directory outside
    "dotdot": lambda o: archive(member("top", tarfile.DIRTYPE), member("top/../../escaped.txt", data=b"pwned")),
    "absolute": lambda o: archive(member("top", tarfile.DIRTYPE), member(f"{o}/escaped.txt", data=b"pwned")),
    "dotdot_top": lambda o: archive(member("../escaped.txt", data=b"pwned")),
    "through_symlink": lambda o: archive(member("top", tarfile.DIRTYPE),
                                         member("top/link", tarfile.SYMTYPE, link=str(o)),
                                         member("top/link/escaped.txt", data=b"pwned")),
    "device_node": lambda o: archive(member("top", tarfile.DIRTYPE), member("top/mem", tarfile.CHRTYPE)),
    "hard_link": lambda o: archive(member("top", tarfile.DIRTYPE), member("top/h", tarfile.LNKTYPE, link="/etc/shadow")),
    "second_top": lambda o: archive(member("top", tarfile.DIRTYPE), member("other.txt", data=b"x")),
    "duplicate": lambda o: archive(member("top", tarfile.DIRTYPE), member("top/a", data=b"1"), member("top/a", data=b"2")),
    "pax_path": lambda o: archive(member("top/../../escaped.txt", data=b"pwned", fmt=tarfile.PAX_FORMAT)),
    "truncated": lambda o: archive(member("top", tarfile.DIRTYPE), member("top/a", data=b"x" * 2000))[:1500],
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_tar_from_a_fake_guest_is_refused_and_nothing_lands_outside(
        case: str, vz: CliRunner, fake_guest: Callable[[bytes], None], tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    dest_parent = tmp_path / "dest-parent"
    dest_parent.mkdir()
    fake_guest(HOSTILE[case](outside))
    before = tree(tmp_path)
    p = vz("oci", "cp", "evil:/top", str(dest_parent / "got"))
    assert p.returncode == HostileArchiveError.exit_code, (p.returncode, p.stderr)
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert not (dest_parent / "got").exists() and not (dest_parent / "got").is_symlink()
    assert list(dest_parent.iterdir()) == []  # no staging directory left behind
    assert list(outside.iterdir()) == []
    assert tree(tmp_path) - before <= set(), tree(tmp_path) - before


def test_symlink_pointing_outside_is_copied_as_a_symlink_never_followed(
        vz: CliRunner, fake_guest: Callable[[bytes], None], tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("host secret\n")
    fake_guest(archive(member("top", tarfile.DIRTYPE), member("top/up", tarfile.SYMTYPE, link="../../../.."),
                       member("top/abs", tarfile.SYMTYPE, link=str(outside / "secret")),
                       member("top/file.txt", data=b"from the guest\n")))
    p = vz("oci", "cp", "evil:/top", str(tmp_path / "got"))
    assert p.returncode == 0, p.stderr
    got = tmp_path / "got"
    assert os.readlink(got / "up") == "../../../.."
    assert os.readlink(got / "abs") == str(outside / "secret")
    assert (got / "file.txt").read_text() == "from the guest\n"
    assert (outside / "secret").read_text() == "host secret\n"


def test_size_and_count_bounds_are_enforced_before_data_is_read(tmp_path: Path) -> None:
    big = tarfile.TarInfo("top")
    big.size = 20 << 30  # announces 20 GiB; the reader must refuse it from the header alone
    data = big.tobuf(format=tarfile.GNU_FORMAT)
    stream = io.BytesIO(data)
    (tmp_path / "s1").mkdir()
    with pytest.raises(HostileArchiveError, match="bounds"):
        copy.receive_tar(stream.read, tmp_path / "s1")
    many = archive(member("top", tarfile.DIRTYPE), *(member(f"top/f{i}") for i in range(20)))
    (tmp_path / "s2").mkdir()
    with pytest.raises(HostileArchiveError, match="bounds"):
        copy.receive_tar(io.BytesIO(many).read, tmp_path / "s2", max_members=10)
    long_name = b"x" * 10000
    info = tarfile.TarInfo("././@LongLink")
    info.type, info.size = tarfile.GNUTYPE_LONGNAME, len(long_name)
    with pytest.raises(HostileArchiveError, match="long-name"):
        copy.receive_tar(io.BytesIO(info.tobuf() + long_name).read, tmp_path / "s1")


def test_outgoing_tar_round_trips_through_the_reader(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "sub" / ("n" * 150)).mkdir(parents=True)  # a long name: GNU records
    (src / "a.txt").write_text("a\n")
    (src / "sub" / ("n" * 150) / "deep.bin").write_bytes(os.urandom(3000))
    os.symlink("/etc/passwd", src / "abs")
    os.link(src / "a.txt", src / "hard")  # a hard link becomes a second regular file
    os.mkfifo(src / "fifo")  # skipped, with a warning
    warnings: list[str] = []
    data = b"".join(copy.write_tar(src, "top", warnings.append))
    (tmp_path / "stage").mkdir()
    top, kind = copy.receive_tar(io.BytesIO(data).read, tmp_path / "stage")
    assert (top, kind) == ("top", "dir")
    out = tmp_path / "stage" / "top"
    assert (out / "a.txt").read_text() == "a\n" and (out / "hard").read_text() == "a\n"
    assert not (out / "hard").samefile(out / "a.txt")
    assert os.readlink(out / "abs") == "/etc/passwd"
    assert (out / "sub" / ("n" * 150) / "deep.bin").read_bytes() == (src / "sub" / ("n" * 150) / "deep.bin").read_bytes()
    assert not (out / "fifo").exists() and any("fifo" in w for w in warnings)


@pytest.mark.parametrize("arg,expected", [
    ("web:/etc/hosts", ("web", "/etc/hosts")), ("./a:b", (None, "./a:b")), ("/x:y", (None, "/x:y")),
    ("plain", (None, "plain")),
])
def test_spec_parsing(arg: str, expected: tuple[str | None, str]) -> None:
    spec = copy.Spec.parse(arg)
    assert (spec.container, spec.path) == expected


def test_cp_needs_exactly_one_container_side(vz: CliRunner, tmp_path: Path) -> None:
    p = vz("oci", "cp", str(tmp_path), str(tmp_path / "x"))
    assert p.returncode == 77 and len(p.stderr.strip().splitlines()) == 1, p.stderr
    p = vz("oci", "cp", "a:/x", "b:/y")
    assert p.returncode == 77, p.stderr


def test_mutated_archives_fail_only_as_hostile_and_stay_in_the_stage(tmp_path: Path) -> None:
    """500 seeded mutations of a valid archive: each is extracted or refused with 76, never another
    exception (a traceback for the user), and nothing is written beside the staging directory."""
    import random

    good = archive(member("top", tarfile.DIRTYPE), member("top/a.txt", data=b"hello" * 100),
                   member("top/" + "n" * 120, data=b"long"), member("top/l", tarfile.SYMTYPE, link="/etc"),
                   member("top/d", tarfile.DIRTYPE), member("top/d/b", data=bytes(700)))
    rng = random.Random(1234)
    outcomes = {"ok": 0, "refused": 0}
    for i in range(500):
        data = bytearray(good)
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        if rng.random() < 0.5:  # most mutations break the checksum: fix it up so the fields get parsed
            for off in range(0, len(data) - 511, 512):
                h = data[off:off + 512]
                if h[257:262] == b"ustar":
                    data[off + 148:off + 156] = b"%06o\0 " % (sum(h[:148]) + 256 + sum(h[156:]))
        box = tmp_path / f"box{i}"
        stage = box / "stage"
        stage.mkdir(parents=True)
        try:
            copy.receive_tar(io.BytesIO(bytes(data)).read, stage)
            outcomes["ok"] += 1
        except HostileArchiveError:
            outcomes["refused"] += 1
        assert [p.name for p in box.iterdir()] == ["stage"]
    assert outcomes["refused"] > 0 and outcomes["ok"] > 0, outcomes


class _FakeVm:
    """What push_tar needs of a LinuxVm: its agent client (here connected to the fake agent)."""

    def __init__(self, agent: object) -> None:
        self.agent = agent


def _push_in_thread(client: object, chunks: list[bytes]) -> Callable[[float], object]:
    from vz_linux.oci import transfer

    from .fake_agent import in_thread

    def run() -> object:
        try:
            transfer.push_tar(_FakeVm(client), "/tmp", iter(chunks))  # type: ignore[arg-type]
        except Exception as e:  # the test inspects what it raised
            return e
        return None

    return in_thread(run)


def test_a_guest_that_stops_reading_fails_the_copy_instead_of_hanging(monkeypatch: pytest.MonkeyPatch) -> None:
    from vz_linux.errors import CopyError
    from vz_linux.oci import transfer
    from vz_linux.vm.agent_protocol import Msg, Tag

    from .fake_agent import fake_pair

    monkeypatch.setattr(transfer, "STALL_TIMEOUT", 1.0)
    with fake_pair() as (client, agent):
        join = _push_in_thread(client, [bytes(1 << 20)] * 8)  # 8 MiB: twice the window
        agent.start_exec(agent.recv(msg=Msg.EXEC))
        deadline = time.monotonic() + 30
        while True:  # the fake agent takes in the stdin and never acknowledges any of it
            agent.poll()
            try:
                error = join(0.05)
                break
            except AssertionError:
                assert time.monotonic() < deadline, "push_tar still waits for a guest that stopped reading"
        stdin = sum(len(f.raw(Tag.DATA) or b"") for f in agent.sent_of(Msg.STDIN))
        assert stdin <= transfer.WINDOW  # never more in flight than the window
        assert isinstance(error, CopyError) and "acknowledged nothing" in str(error)
        kill = agent.recv(msg=Msg.SIGNAL)  # the extractor is killed, not left running
        assert kill.int(Tag.SIGNAL) == 9


def test_an_acknowledgement_beyond_what_was_sent_is_a_protocol_error() -> None:
    from vz_linux.errors import AgentProtocolError
    from vz_linux.vm.agent_protocol import Msg

    from .fake_agent import fake_pair

    with fake_pair() as (client, agent):
        join = _push_in_thread(client, [bytes(4096)])
        req = agent.recv(msg=Msg.EXEC)
        agent.start_exec(req)
        agent.output(req.request_id, b"ack 999999999\n")
        error = join(30)
        assert isinstance(error, AgentProtocolError), error
