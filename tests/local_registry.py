"""A real OCI registry on 127.0.0.1 for tests and benchmarks: Debian's ``docker-registry``
(distribution v2) on a free port with htpasswd (bcrypt) basic auth and its storage in a temp dir,
stopped (and reaped) on exit. Shared by the distribution tests (bundles as OCI artifacts) and the
OCI tests (container images pulled with ``vz oci pull``).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from vz_linux.run import run, spawn, terminate


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LocalRegistry:
    """A running ``docker-registry`` on 127.0.0.1 with one htpasswd user."""

    root: Path
    port: int
    user: str
    password: str
    proc: subprocess.Popen[bytes]

    def stop(self) -> None:
        """Stop it now (a test that needs the registry gone); the fixture's exit is then a no-op."""
        terminate(self.proc)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def auth_file(self, path: Path, password: str | None = None) -> Path:
        """A docker/podman auth file (``{"auths": {HOST: {"auth": base64(user:pass)}}}``) at ``path``."""
        token = base64.b64encode(f"{self.user}:{password or self.password}".encode()).decode()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"auths": {self.host: {"auth": token}}}))
        return path

    def blob_data(self, digest: str) -> Path:
        """Where the registry's storage keeps a blob's bytes."""
        hexd = digest.split(":", 1)[1]
        return self.root / "storage" / "docker" / "registry" / "v2" / "blobs" / "sha256" / hexd[:2] / hexd / "data"

    def get(self, path: str, accept: str | None = None) -> bytes:
        req = urllib.request.Request(f"http://{self.host}{path}")
        req.add_header("Authorization", "Basic " + base64.b64encode(f"{self.user}:{self.password}".encode()).decode())
        if accept:
            req.add_header("Accept", accept)
        with urllib.request.urlopen(req, timeout=30) as resp:
            return bytes(resp.read())


def _config(root: Path, port: int) -> str:
    return (f"version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {root / 'storage'}\n"
            f"http:\n  addr: 127.0.0.1:{port}\nauth:\n  htpasswd:\n    realm: vz-linux-tests\n"
            f"    path: {root / 'htpasswd'}\n")


def _wait_ready(port: int, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"docker-registry exited with {proc.returncode}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=2)
        except urllib.error.HTTPError as e:
            if e.code == 401:  # up, and asking for the credentials we configured
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError("docker-registry did not become ready")


@contextlib.contextmanager
def local_registry(root: Path, user: str = "vz", password: str = "s3cret-pass") -> Iterator[LocalRegistry]:
    root.mkdir(parents=True, exist_ok=True)
    line = run(["htpasswd", "-Bbn", user, password]).stdout.decode().strip()
    (root / "htpasswd").write_text(line + "\n")
    port = free_port()
    (root / "config.yml").write_text(_config(root, port))
    # distribution reads every REGISTRY_* variable as a config override: podman's REGISTRY_AUTH_FILE
    # would become "auth.file" and break the htpasswd section. The registry gets none of them.
    unset = [f"--unset={k}" for k in os.environ if k.startswith("REGISTRY_")]
    argv = ["env", *unset, "docker-registry", "serve", str(root / "config.yml")]
    with open(root / "registry.log", "wb") as log, spawn(argv, stdout=log, stderr=log) as proc:
        _wait_ready(port, proc)
        yield LocalRegistry(root, port, user, password, proc)
