"""The supervisor socket's byte-stream requests (``cp``): a JSON line, then length-prefixed chunks.

Requests and replies are JSON lines (:mod:`.supervisor`); a ``copy_in``/``copy_out`` request then
carries a tar stream as chunks — a 4-byte big-endian length and that many bytes, a zero length
ending the stream — followed by one JSON line with the result. :class:`Reader` keeps what it read
past a line, so lines and chunks share one buffer.
"""

from __future__ import annotations

import json
import socket
import struct
from typing import Any

from ..errors import OciError

LINE_LIMIT = 1 << 20
CHUNK_LIMIT = 1 << 20  # largest chunk either side accepts
_LEN = struct.Struct(">I")


class Reader:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buf = bytearray()

    def _fill(self) -> bool:
        data = self.sock.recv(1 << 18)
        if not data:
            return False
        self._buf += data
        return True

    def line(self) -> bytes | None:
        """The next line (without its newline), or None at a clean end of stream."""
        while True:
            at = self._buf.find(b"\n")
            if at >= 0:
                out = bytes(self._buf[:at])
                del self._buf[: at + 1]
                return out
            if len(self._buf) > LINE_LIMIT:
                raise OciError("oversized message on the supervisor socket")
            if not self._fill():
                if self._buf:
                    raise OciError("the supervisor socket closed in the middle of a message")
                return None

    def exact(self, n: int) -> bytes:
        while len(self._buf) < n:
            if not self._fill():
                raise OciError("the supervisor socket closed in the middle of a stream")
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out

    def json(self) -> dict[str, Any] | None:
        line = self.line()
        if line is None:
            return None
        msg = json.loads(line)
        if not isinstance(msg, dict):
            raise ValueError("not a JSON object")
        return msg

    def chunk(self) -> bytes:
        """The next chunk; b"" ends the stream."""
        (n,) = _LEN.unpack(self.exact(_LEN.size))
        if n > CHUNK_LIMIT:
            raise OciError(f"a {n}-byte chunk on the supervisor socket is over the {CHUNK_LIMIT}-byte limit")
        return self.exact(n) if n else b""


def send_json(sock: socket.socket, msg: dict[str, Any]) -> None:
    sock.sendall(json.dumps(msg).encode() + b"\n")


def send_chunk(sock: socket.socket, data: bytes) -> None:
    """Send ``data`` as one or more chunks (never an empty one: that ends the stream)."""
    view = memoryview(data)
    while view:
        part = view[:CHUNK_LIMIT]
        sock.sendall(_LEN.pack(len(part)) + part)
        view = view[CHUNK_LIMIT:]


def send_end(sock: socket.socket) -> None:
    sock.sendall(_LEN.pack(0))
