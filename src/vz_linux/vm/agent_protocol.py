"""The guest agent's wire format (docs/PROTOCOL.md), host side: frames and TLV fields.

Mirrors ``guest/agent/protocol.h`` (the transports and limits: ``main.c``, ``agent.h``); tests check
the constants agree (``tests/guest/test_agent_build.py``).
"""

from __future__ import annotations

import builtins
import enum
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

MAGIC = b"VZ"
HEADER = struct.Struct(">2sBBII")  # magic, type, flags, request id, payload length
HEADER_SIZE = HEADER.size
TLV_HEADER = struct.Struct(">HI")
MAX_PAYLOAD = 1024 * 1024
FILE_LIMIT = 512 * 1024
MAX_TIMEOUT_MS = 1 << 40  # the agent refuses a longer TIMEOUT_MS (a deadline must not overflow)
VSOCK_PORT = 7424
SERIAL_PORT_NAME = "org.vz.agent.0"
# RESTORED carries this many bytes of host entropy (the agent accepts ENTROPY_MIN..ENTROPY_MAX).
ENTROPY_BYTES = 64
ENTROPY_MIN = 16
ENTROPY_MAX = 512
MAX_WINSIZE = 65535  # ROWS / COLS of a terminal are 1..MAX_WINSIZE
MAX_FWDS = 256  # forwarded connections the agent serves at once (agent.h)
FWD_QUEUE_LIMIT = 1 << 20  # host data the agent queues per forward before dropping it (agent.h)
# Flag fields: present (empty) or absent.
FLAG_TAGS = frozenset({"EOF", "TTY"})


class Msg(enum.IntEnum):
    HELLO = 0x01
    PING = 0x02
    EXEC = 0x03
    STDIN = 0x04
    SIGNAL = 0x05
    READ_FILE = 0x06
    WRITE_FILE = 0x07
    PROBE = 0x08
    POWEROFF = 0x09
    FLOW = 0x0A
    RESTORED = 0x0B
    RESIZE = 0x10
    FORWARD_OPEN = 0x11
    FORWARD_DATA = 0x12
    FORWARD_CLOSE = 0x13
    OK = 0x80
    ERROR = 0x81
    STARTED = 0x82
    OUTPUT = 0x83
    EXIT = 0x84
    FORWARD_RECV = 0x90
    FORWARD_CLOSED = 0x91
    FORWARD_ACK = 0x92


class Tag(enum.IntEnum):
    ARGV = 1
    ENV = 2
    CWD = 3
    TIMEOUT_MS = 4
    DATA = 5
    EOF = 6
    STREAM = 7
    EXIT_CODE = 8
    SIGNAL = 9
    EXEC_ID = 10
    PATH = 11
    MODE = 12
    NAME = 13
    SNIPPET = 14
    PASS = 15
    EVIDENCE = 16
    ERROR_CODE = 17
    MESSAGE = 18
    PID = 19
    VERSION = 20
    REVISION = 21
    SYSNAME = 22
    RELEASE = 23
    OS_VERSION = 24
    MACHINE = 25
    MONOTONIC_NS = 26
    BOOTTIME_NS = 27
    START_BOOTTIME_NS = 28
    START_MONOTONIC_NS = 29
    REALTIME_NS = 30
    TIMED_OUT = 31
    ACTION = 32
    MAX_SIZE = 33
    SIZE = 34
    TRANSPORT = 35
    PAUSE = 36
    TTY = 40
    ROWS = 41
    COLS = 42
    PORT = 43


class ErrorCode(enum.IntEnum):
    FRAMING = 1
    TOO_BIG = 2
    UNKNOWN_TYPE = 3
    BAD_PAYLOAD = 4
    NOT_FOUND = 5
    BUSY = 6
    IO = 7
    NOT_PERMITTED = 8
    LIMIT = 9


class Stream(enum.IntEnum):
    STDOUT = 1
    STDERR = 2


class PowerAction(enum.IntEnum):
    POWEROFF = 0
    REBOOT = 1
    HALT = 2


FieldValue = bytes | str | int | bool
Field = tuple[Tag, FieldValue]


def encode_field(tag: Tag, value: FieldValue) -> bytes:
    if isinstance(value, bool):
        raw = b"" if tag.name in FLAG_TAGS else struct.pack(">Q", int(value))
    elif isinstance(value, int):
        raw = struct.pack(">Q", value & 0xFFFF_FFFF_FFFF_FFFF)
    elif isinstance(value, str):
        raw = value.encode()
    else:
        raw = bytes(value)
    return TLV_HEADER.pack(int(tag), len(raw)) + raw


def encode_frame(msg: int, request_id: int, fields: Iterable[Field] = ()) -> bytes:
    payload = b"".join(encode_field(t, v) for t, v in fields)
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"payload of {len(payload)} bytes is over the {MAX_PAYLOAD}-byte frame limit")
    return HEADER.pack(MAGIC, msg, 0, request_id, len(payload)) + payload


@dataclass(frozen=True)
class Frame:
    msg: int
    request_id: int
    fields: tuple[tuple[int, bytes], ...]

    def raw(self, tag: Tag) -> bytes | None:
        for t, v in self.fields:
            if t == tag:
                return v
        return None

    def str(self, tag: Tag, default: str = "") -> str:
        v = self.raw(tag)
        return default if v is None else v.decode(errors="replace")

    def int(self, tag: Tag) -> int | None:
        v = self.raw(tag)
        if v is None or len(v) != 8:
            return None
        return int.from_bytes(v, "big")

    def checked_int(self, tag: Tag, low: builtins.int, high: builtins.int) -> builtins.int:
        """The integer field ``tag``, which must be present and lie in ``low..high``
        (:class:`FrameValueError` otherwise). Guest values are never trusted."""
        value = self.optional_int(tag, low, high)
        if value is None:
            raise FrameValueError(f"{tag.name} is missing")
        return value

    def optional_int(self, tag: Tag, low: builtins.int, high: builtins.int) -> builtins.int | None:
        """Like :meth:`checked_int`, but None when the field is absent."""
        raw = self.raw(tag)
        if raw is None:
            return None
        if len(raw) != 8:
            raise FrameValueError(f"{tag.name} is {len(raw)} bytes, not 8")
        value = int.from_bytes(raw, "big")
        if not low <= value <= high:
            raise FrameValueError(f"{tag.name} {value} is outside {low}..{high}")
        return value

    @property
    def size(self) -> builtins.int:
        """Bytes this frame took on the wire (what a request's inbox is charged for it)."""
        return HEADER_SIZE + sum(TLV_HEADER.size + len(v) for _, v in self.fields)


class FrameError(ValueError):
    """The agent's byte stream is not valid framing (the channel cannot be trusted any more)."""


class FrameValueError(ValueError):
    """A frame that parses but carries a value the protocol does not allow (only its request fails)."""


def decode_fields(payload: bytes) -> tuple[tuple[int, bytes], ...]:
    out: list[tuple[int, bytes]] = []
    pos = 0
    while pos < len(payload):
        if len(payload) - pos < TLV_HEADER.size:
            raise FrameError("truncated field header")
        tag, n = TLV_HEADER.unpack_from(payload, pos)
        pos += TLV_HEADER.size
        if n > len(payload) - pos:
            raise FrameError("truncated field value")
        out.append((tag, payload[pos : pos + n]))
        pos += n
    return tuple(out)


class FrameReader:
    """Incremental decoder: feed bytes, iterate complete frames."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> Iterator[Frame]:
        self._buf += data
        while len(self._buf) >= HEADER_SIZE:
            magic, msg, _flags, rid, n = HEADER.unpack_from(self._buf)
            if magic != MAGIC:
                raise FrameError(f"bad magic {bytes(magic)!r} from the agent")
            if n > MAX_PAYLOAD:
                raise FrameError(f"frame of {n} bytes over the limit")
            if len(self._buf) < HEADER_SIZE + n:
                return
            payload = bytes(self._buf[HEADER_SIZE : HEADER_SIZE + n])
            del self._buf[: HEADER_SIZE + n]
            yield Frame(msg, rid, decode_fields(payload))
