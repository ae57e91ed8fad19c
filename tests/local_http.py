"""One real HTTP(S) server on 127.0.0.1 for the tests that need one (sources, VM smoke, downloads)."""

from __future__ import annotations

import contextlib
import http.server
import ssl
import threading
from collections.abc import Callable, Iterator
from typing import Any


@contextlib.contextmanager
def local_http_server(handler: Callable[..., Any], tls: ssl.SSLContext | None = None) -> Iterator[int]:
    """Serve ``handler`` on a free port of 127.0.0.1 (TLS with ``tls``) for the block; yields the port."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    if tls is not None:
        httpd.socket = tls.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd.server_address[1]
    finally:
        httpd.shutdown()
        httpd.server_close()
