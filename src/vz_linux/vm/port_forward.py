"""Host ports forwarded into the guest through the agent channel (``-p``; docs/vm.md, "Ports").

The host listens (default 127.0.0.1); every accepted connection becomes one agent ``FORWARD_OPEN`` to
127.0.0.1:PORT in the guest — inside a container's network namespace when ``netns`` names one — and
bytes are relayed both ways with the agent's flow control (bounded on both sides: the guest is
hostile, docs/security.md). No guest network device is involved. Listening starts in :meth:`bind`,
before the VM boots, so a port in use fails before anything is started; connections made before
:meth:`start` wait in the listen backlog.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType

from ..errors import AgentError, PortInUseError, VzLinuxError
from .agent_client import AgentClient, ForwardChannel

log = logging.getLogger(__name__)

MAX_CONNECTIONS = 128  # per forwarder; the agent serves 256 at once (agent.h MAX_FWDS)
_RECV = 64 << 10
_OPEN_TIMEOUT = 30.0

NetnsResolver = Callable[[], "str | None"]


@dataclass(frozen=True)
class ForwardSpec:
    """One ``-p`` mapping: listen on ``host_ip:host_port``, connect to ``guest_port`` inside."""

    host_ip: str
    host_port: int
    guest_port: int

    def describe(self) -> str:
        host = f"[{self.host_ip}]" if ":" in self.host_ip else self.host_ip
        return f"{host}:{self.host_port} -> {self.guest_port}/tcp"


class PortForwarder:
    """Listeners for a set of :class:`ForwardSpec` and the relays of their connections."""

    def __init__(self, specs: tuple[ForwardSpec, ...]) -> None:
        self.specs = specs
        self._listeners: list[tuple[socket.socket, ForwardSpec]] = []
        self._agent: AgentClient | None = None
        self._netns: NetnsResolver = lambda: None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._live: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self.failures: list[str] = []  # the last few per-connection failures (bounded)

    def __enter__(self) -> PortForwarder:
        self.bind()
        return self

    def __exit__(self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def bind(self) -> None:
        """Listen on every host address (all or none: a failure closes the ones already bound)."""
        try:
            for spec in self.specs:
                self._listeners.append((_listen(spec), spec))
        except BaseException:
            self.close()
            raise

    def start(self, agent: AgentClient, netns: NetnsResolver | None = None) -> None:
        """Serve connections through ``agent``; ``netns()`` names the guest network namespace file
        to connect in (None: the agent's own), asked once per connection."""
        self._agent = agent
        if netns is not None:
            self._netns = netns
        for sock, spec in self._listeners:
            t = threading.Thread(target=self._accept_loop, args=(sock, spec), daemon=True,
                                 name=f"vz-forward-{spec.host_port}")
            t.start()
            self._threads.append(t)

    def close(self) -> None:
        self._stop.set()
        for sock, _ in self._listeners:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        self._listeners.clear()
        with self._lock:
            live = list(self._live)
        for conn in live:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        for t in self._threads:
            t.join(timeout=5)

    def _accept_loop(self, sock: socket.socket, spec: ForwardSpec) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            with self._lock:
                full = len(self._live) >= MAX_CONNECTIONS
                if not full:
                    self._live.add(conn)
            if full:
                self._note(f"{spec.describe()}: over {MAX_CONNECTIONS} connections, refused one")
                conn.close()
                continue
            threading.Thread(target=self._relay, args=(conn, spec), daemon=True).start()

    def _note(self, text: str) -> None:
        log.warning("port forward %s", text)
        with self._lock:
            self.failures = [*self.failures[-15:], text]

    def _relay(self, conn: socket.socket, spec: ForwardSpec) -> None:
        try:
            assert self._agent is not None
            try:
                channel = self._agent.forward_open(spec.guest_port, netns=self._netns(), timeout=_OPEN_TIMEOUT)
            except VzLinuxError as e:  # nothing listens, the agent is gone, no container netns yet
                self._note(f"{spec.describe()}: {e}")
                return  # the client sees its connection closed at once
            with channel:
                up = threading.Thread(target=_host_to_guest, args=(conn, channel), daemon=True)
                up.start()
                _guest_to_host(conn, channel)
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)  # ends the other direction's recv
                up.join(timeout=10)
        finally:
            with self._lock:
                self._live.discard(conn)
            conn.close()


def _listen(spec: ForwardSpec) -> socket.socket:
    family = socket.AF_INET6 if ":" in spec.host_ip else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((spec.host_ip, spec.host_port))
        sock.listen(64)
    except OSError as e:
        sock.close()
        why = {errno.EADDRINUSE: "the port is in use", errno.EACCES: "permission denied",
               errno.EADDRNOTAVAIL: "no such local address"}.get(e.errno or 0, e.strerror or str(e))
        raise PortInUseError(f"cannot listen on {spec.describe().split(' ')[0]}: {why}",
                             hint="pick another host port, e.g. -p 8081:80") from None
    return sock


def _host_to_guest(conn: socket.socket, channel: ForwardChannel) -> None:
    """Local client → guest, then half-close the guest side on the client's EOF."""
    with contextlib.suppress(OSError, AgentError):
        while data := conn.recv(_RECV):
            channel.send(data, timeout=None)
        channel.shutdown_write()


def _guest_to_host(conn: socket.socket, channel: ForwardChannel) -> None:
    """Guest → local client until the guest connection is closed; its EOF half-closes ours."""
    with contextlib.suppress(OSError, AgentError):
        while True:
            ev = channel.recv(timeout=None)
            if ev.data:
                conn.sendall(ev.data)
            elif ev.eof:
                conn.shutdown(socket.SHUT_WR)
            elif ev.closed:
                return
