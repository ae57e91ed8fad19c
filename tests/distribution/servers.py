"""Real servers on 127.0.0.1 for the distribution tests and benchmarks.

* :class:`ReleaseServer`: an HTTP server (stdlib) serving a release directory, with ``Range``
  support (what a resumed download asks for) and a record of every request. ``cut_after`` makes it
  send a file's full ``Content-Length`` but close the connection after N bytes: a truncated download
  produced for real, by a real server misbehaving on purpose.
* :class:`LocalRegistry` / :func:`local_registry`: re-exported from ``tests/local_registry.py``
  (shared with the OCI tests).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from ..local_registry import LocalRegistry as LocalRegistry
from ..local_registry import free_port as free_port
from ..local_registry import local_registry as local_registry


@dataclass
class Request:
    path: str
    range: str | None


@dataclass
class ReleaseServer:
    directory: Path
    cut_after: dict[str, int] = field(default_factory=dict)  # file name -> bytes sent before closing
    requests: list[Request] = field(default_factory=list)
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def names(self) -> list[str]:
        return [r.path.lstrip("/") for r in self.requests]

    @contextlib.contextmanager
    def running(self) -> Iterator[ReleaseServer]:
        server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        server.daemon_threads = True
        self.port = server.server_address[1]
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            server.shutdown()
            server.server_close()
            thread.join(timeout=10)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                owner.requests.append(Request(self.path, self.headers.get("Range")))
                name = self.path.lstrip("/")
                path = owner.directory / name
                if "/" in name or not path.is_file():
                    self.send_error(404)
                    return
                data = path.read_bytes()
                start = 0
                rng = self.headers.get("Range")
                if rng and rng.startswith("bytes=") and rng.endswith("-"):
                    start = int(rng[6:-1])
                    if start >= len(data):
                        self.send_error(416)
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                cut = owner.cut_after.pop(name, None)
                self.wfile.write(body if cut is None else body[:cut])
                if cut is not None:
                    self.close_connection = True

        return Handler
