"""`vz oci logs -f`'s follower across a log rotation (no VM): every byte once, in order."""

from __future__ import annotations

from pathlib import Path

from vz_linux.oci.observe import _Follower
from vz_linux.vm.guest_log import CappedLog


def test_follower_reads_across_rotations_every_byte_once(tmp_path: Path) -> None:
    path = tmp_path / "stdout.log"
    got = bytearray()
    log = CappedLog(path, 100)
    log.write(b"a" * 60)
    follower = _Follower(path, got.extend)
    follower.pump()
    assert bytes(got) == b"a" * 60
    log.write(b"b" * 70)  # rotates: stdout.log (60 a + 40 b) → stdout.log.1, 30 b in a new file
    follower.pump()
    log.write(b"c" * 10)
    follower.pump()
    assert bytes(got) == b"a" * 60 + b"b" * 70 + b"c" * 10
    follower.close()
    log.close()


def test_follower_starts_with_the_rotated_part(tmp_path: Path) -> None:
    path = tmp_path / "stderr.log"
    with CappedLog(path, 10) as log:
        log.write(b"0123456789abc")
    got = bytearray()
    follower = _Follower(path, got.extend)
    follower.pump()
    assert bytes(got) == b"0123456789abc"
    follower.close()
