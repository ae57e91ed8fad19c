"""Talking to an OCI registry through Debian's ``skopeo`` (docs/distribution.md, "Registry").

Why skopeo (checked with 1.9.3 against Debian's ``docker-registry``): it is the containers/image
client podman uses, so credentials follow the ecosystem's conventions by itself
(``$REGISTRY_AUTH_FILE``, ``$XDG_RUNTIME_DIR/containers/auth.json``, ``~/.docker/config.json``),
it speaks token and basic auth, and it verifies every blob's digest while copying. It copies our
per-arch artifact manifests byte for byte (``artifactType``, our config media type, layer
annotations) from an OCI layout; it re-serialises the image index on push, so the pushed index
digest is read back (``--digestfile``) rather than assumed. The ORAS Python SDK (``oras`` 0.2) was
the alternative: it cannot push an image index, its default auth backend cannot log in to a
basic-auth registry, and it retries a refused connection for about two minutes.

A registry on a loopback address is spoken to over plain HTTP (as Docker does); any other needs
TLS unless ``plain_http`` (``--plain-http``).
"""

from __future__ import annotations

import ipaddress
import os
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import (
    BlobDigestError,
    InvalidConfigError,
    ReferenceNotFoundError,
    RegistryAuthError,
    RegistryError,
)
from ..run import run

AUTH_FILE_ENV = "REGISTRY_AUTH_FILE"
DEFAULT_TAG = "latest"
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REFERENCE = re.compile(
    rf"^(?P<registry>[^/@\s]+)/(?P<repository>{_COMPONENT}(?:/{_COMPONENT})*)"
    r"(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}))?(?:@(?P<digest>sha256:[0-9a-f]{64}))?$")
_HOST = re.compile(r"^(?:\[[0-9a-fA-F:.]+\]|localhost|[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+|[A-Za-z0-9-]+(?=:))(?::\d+)?$")


@dataclass(frozen=True)
class Platform:
    """An OCI platform (``os``/``architecture`` of an image index entry)."""

    os: str
    architecture: str

    def __str__(self) -> str:
        return f"{self.os}/{self.architecture}"


@dataclass(frozen=True)
class Reference:
    """``HOST[:PORT]/REPO[:TAG][@sha256:…]``: the registry host is required (no implicit docker.io)."""

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @classmethod
    def parse(cls, text: str) -> Reference:
        m = _REFERENCE.match(text.strip())
        if m is None or not _HOST.match(m.group("registry")):
            raise InvalidConfigError(
                f"{text!r} is not a registry reference HOST[:PORT]/REPO[:TAG][@sha256:DIGEST]",
                hint="e.g. registry.example.com/vz/container:1.2.0 (lower-case repository, registry host first)")
        return cls(m.group("registry"), m.group("repository"), m.group("tag"), m.group("digest"))

    @property
    def host(self) -> str:
        if self.registry.startswith("["):
            return self.registry[1:self.registry.index("]")]
        return self.registry.rsplit(":", 1)[0] if ":" in self.registry else self.registry

    @property
    def is_loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    @property
    def name(self) -> str:
        return f"{self.registry}/{self.repository}"

    def at(self, digest: str) -> Reference:
        """The same repository pinned to ``digest`` (the tag dropped: a digest pin wins)."""
        return Reference(self.registry, self.repository, None, digest)

    def with_default_tag(self) -> Reference:
        return self if self.tag or self.digest else Reference(self.registry, self.repository, DEFAULT_TAG)

    def __str__(self) -> str:
        return self.name + (f":{self.tag}" if self.tag else "") + (f"@{self.digest}" if self.digest else "")

    def transport(self) -> str:
        # skopeo refuses tag+digest together; the digest decides (a digest pin wins).
        return f"docker://{self.at(self.digest) if self.digest else self}"


def _message(stderr: bytes) -> str:
    """skopeo's fatal message, unquoted (``level=fatal msg="…"``), or the last line."""
    text = stderr.decode(errors="replace").strip()
    m = re.search(r'level=fatal msg="((?:[^"\\]|\\.)*)"', text)
    if m:
        return m.group(1).encode().decode("unicode_escape", errors="replace").strip()
    lines = text.splitlines()
    return lines[-1] if lines else "no output"


def classify(stderr: bytes, what: str) -> RegistryError:
    """The typed error for a failed skopeo run (``what``: e.g. ``"pulling REF"``)."""
    msg = _message(stderr)
    low = msg.lower()
    if "digest did not match" in low or "digest mismatch" in low:
        return BlobDigestError(f"{what}: {msg}", hint="the registry's copy is corrupted; nothing was installed")
    if any(s in low for s in ("unauthorized", "authentication required", "denied", "username and password",
                              "invalid username/password")):
        return RegistryAuthError(f"{what}: {msg}",
                                 hint=f"log in (credentials in ~/.docker/config.json or ${AUTH_FILE_ENV})")
    if any(s in low for s in ("manifest unknown", "name unknown", "not found", "blob unknown", "no image found")):
        return ReferenceNotFoundError(f"{what}: {msg}", hint="check the repository, tag and digest")
    hint = "pass --plain-http for a registry without TLS" if "https" in low else "is the registry reachable?"
    return RegistryError(f"{what}: {msg}", hint=hint)


@dataclass(frozen=True)
class RegistryClient:
    plain_http: bool = False
    # None: TLS off for a loopback registry (as Docker does), on otherwise; True/False: as said.
    tls_verify: bool | None = None
    auth_file: Path | None = None  # else $REGISTRY_AUTH_FILE, else skopeo's defaults (~/.docker/config.json…)
    timeout: float = 1800.0

    def _tls(self, ref: Reference) -> str:
        if self.tls_verify is not None:
            return "true" if self.tls_verify else "false"
        return "false" if self.plain_http or ref.is_loopback else "true"

    def _auth(self) -> list[str]:
        path = self.auth_file or (Path(os.environ[AUTH_FILE_ENV]) if os.environ.get(AUTH_FILE_ENV) else None)
        return ["--authfile", str(path)] if path is not None else []

    # --- argv as data (tested without a registry) ---------------------------------------------
    def inspect_argv(self, ref: Reference) -> list[str]:
        return ["skopeo", "inspect", "--raw", *self._auth(), f"--tls-verify={self._tls(ref)}", ref.transport()]

    def pull_argv(self, ref: Reference, layout_dir: Path) -> list[str]:
        return ["skopeo", "copy", "--quiet", *self._auth(), f"--src-tls-verify={self._tls(ref)}",
                ref.transport(), f"oci:{layout_dir}:bundle"]

    def image_pull_argv(self, ref: Reference, layout_dir: Path, tag: str, platform: Platform,
                        digest_file: Path) -> list[str]:
        """One platform's image (chosen from an index by ``platform``) into an OCI layout as ``tag``."""
        return ["skopeo", "--override-os", platform.os, "--override-arch", platform.architecture, "copy",
                "--quiet", "--digestfile", str(digest_file), *self._auth(), f"--src-tls-verify={self._tls(ref)}",
                ref.transport(), f"oci:{layout_dir}:{tag}"]

    def push_argv(self, layout_dir: Path, tag: str, ref: Reference, digest_file: Path) -> list[str]:
        return ["skopeo", "copy", "--quiet", "--all", "--digestfile", str(digest_file), *self._auth(),
                f"--dest-tls-verify={self._tls(ref)}", f"oci:{layout_dir}:{tag}", ref.transport()]

    # --- operations -----------------------------------------------------------------------------
    def _run(self, argv: list[str], what: str) -> subprocess.CompletedProcess[bytes]:
        r = run(argv, check=False, timeout=self.timeout)
        if r.returncode != 0:
            raise classify(r.stderr, what)
        return r

    def manifest(self, ref: Reference) -> bytes:
        """The raw manifest or index ``ref`` names (its sha256 is its digest)."""
        return self._run(self.inspect_argv(ref), f"reading {ref}").stdout

    def pull(self, ref: Reference, layout_dir: Path) -> None:
        """Copy the manifest ``ref`` (pinned by digest) and its blobs into a new OCI layout."""
        self._run(self.pull_argv(ref, layout_dir), f"pulling {ref}")

    def pull_image(self, ref: Reference, layout_dir: Path, tag: str, platform: Platform) -> str:
        """Copy the image ``ref`` names for ``platform`` into an OCI layout; its manifest digest there."""
        with tempfile.TemporaryDirectory(prefix="vz-pull-") as tmp:
            digest_file = Path(tmp) / "digest"
            self._run(self.image_pull_argv(ref, layout_dir, tag, platform, digest_file), f"pulling {ref}")
            return _read_digest(digest_file, f"pulling {ref}")

    def push(self, layout_dir: Path, tag: str, ref: Reference) -> str:
        """Push the layout's ``tag`` (an index and its manifests) to ``ref``; returns the pushed digest."""
        with tempfile.TemporaryDirectory(prefix="vz-push-") as tmp:
            digest_file = Path(tmp) / "digest"
            self._run(self.push_argv(layout_dir, tag, ref, digest_file), f"pushing to {ref}")
            return _read_digest(digest_file, f"pushing to {ref}")


def _read_digest(digest_file: Path, what: str) -> str:
    """The digest skopeo wrote with ``--digestfile`` (checked before anyone builds a path from it)."""
    try:
        digest = digest_file.read_text().strip()
    except OSError:
        digest = ""
    if not re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
        raise RegistryError(f"{what}: skopeo reported success but no digest ({digest[:100]!r})",
                            hint="check the registry with skopeo inspect")
    return digest
