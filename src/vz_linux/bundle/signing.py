"""Release signatures with OpenSSH's own tool (docs/distribution.md, "Keys and trust").

A release is signed with ``ssh-keygen -Y sign`` (SSHSIG format, namespace ``vz-linux-release``) by
an ed25519 key that ``vz-linux keygen`` makes with ``ssh-keygen -t ed25519``. Anyone can check a
release with the same tool they already have (``ssh-keygen -Y verify``); we run exactly that,
against an ``allowed_signers`` file made from the trusted public keys. Three steps tell the three
failures apart: ``check-novalidate`` (is it a valid signature over this file at all? else
:class:`SignatureError`), ``find-principals`` (by a trusted key? else :class:`UntrustedKeyError`),
then ``verify`` (the full check).
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .. import layout
from ..errors import ReleaseError, SignatureError, UntrustedKeyError
from ..run import run

NAMESPACE = "vz-linux-release"
PRINCIPAL = "vz-linux-release"
SIGNATURE_SUFFIX = ".sig"
_KEY_TYPE = re.compile(r"^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)|sk-[a-z0-9@.-]+)$")
_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class PublicKey:
    """One OpenSSH public key line (``TYPE BASE64 [comment]``) and where it came from."""

    key_type: str
    blob: str
    origin: Path

    @classmethod
    def read(cls, path: Path) -> PublicKey:
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as e:
            raise UntrustedKeyError(f"cannot read trusted key {path}: {getattr(e, 'strerror', None) or e}",
                                    hint="pass an OpenSSH public key file (KEY.pub)") from None
        fields = text.split()
        if len(fields) < 2 or not _KEY_TYPE.match(fields[0]):
            raise UntrustedKeyError(f"{path} is not an OpenSSH public key",
                                    hint="pass the KEY.pub that `vz-linux keygen` wrote")
        return cls(fields[0], fields[1], path)

    def allowed_signers_line(self) -> str:
        return f'{PRINCIPAL} namespaces="{NAMESPACE}" {self.key_type} {self.blob}'


def generate_key(path: Path, comment: str = "vz-linux release key") -> Path:
    """Write an ed25519 private key to ``path`` (mode 0600) and its public key to ``path.pub``."""
    pub = public_key_path(path)
    for p in (path, pub):
        if p.exists() or p.is_symlink():
            raise ReleaseError(f"{p} already exists; refusing to overwrite a key",
                               hint="choose another --out, or remove the old key on purpose")
    if not path.parent.is_dir():
        raise ReleaseError(f"directory {path.parent} does not exist", hint="create it first")
    r = run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", path], check=False,
            timeout=_TIMEOUT_S)
    if r.returncode != 0:
        raise ReleaseError(f"ssh-keygen could not write {path}: {_last_line(r.stderr)}",
                           hint="check the directory is writable")
    return pub


def public_key_path(private_key: Path) -> Path:
    return private_key.with_name(private_key.name + ".pub")


def sign_file(private_key: Path, path: Path) -> Path:
    """Sign ``path`` with ``private_key``; returns the signature file ``path.sig`` (SSHSIG, armored)."""
    if not private_key.is_file():
        raise ReleaseError(f"signing key {private_key} does not exist",
                           hint="make one with `vz-linux keygen --out KEY`")
    sig = signature_path(path)
    if sig.exists():
        raise ReleaseError(f"{sig} already exists", hint="sign into a fresh directory")
    r = run(["ssh-keygen", "-q", "-Y", "sign", "-f", private_key, "-n", NAMESPACE, path], check=False,
            timeout=_TIMEOUT_S)
    if r.returncode != 0 or not sig.is_file():
        raise ReleaseError(f"cannot sign {path.name} with {private_key}: {_last_line(r.stderr)}",
                           hint="the key must be an unencrypted OpenSSH private key readable only by you (0600)")
    return sig


def signature_path(path: Path) -> Path:
    return path.with_name(path.name + SIGNATURE_SUFFIX)


def trusted_keys(explicit: Sequence[Path] = ()) -> list[PublicKey]:
    """The keys to trust: ``explicit`` ones (``--trusted-key``), else every ``*.pub`` in
    ``~/.vz/linux/trusted-keys/``. None at all is an :class:`UntrustedKeyError`."""
    if explicit:
        return [PublicKey.read(Path(p)) for p in explicit]
    where = layout.trusted_keys_dir()
    keys = [PublicKey.read(p) for p in sorted(where.glob("*.pub"))] if where.is_dir() else []
    if not keys:
        raise UntrustedKeyError(
            f"no trusted release key: none given and none in {where}",
            hint=f"pass --trusted-key KEY.pub, or copy the publisher's KEY.pub into {where}/")
    return keys


def verify_file(path: Path, signature: Path, keys: Sequence[PublicKey]) -> None:
    """``path`` is signed by one of ``keys`` in our namespace, or the typed error says which step failed."""
    if not signature.is_file():
        raise SignatureError(f"{signature.name} is missing: the release is not signed",
                             hint="ask the publisher for a signed release (vz-linux release --signing-key)")
    with open(path, "rb") as data:
        r = run(["ssh-keygen", "-Y", "check-novalidate", "-n", NAMESPACE, "-s", signature], stdin=data,
                check=False, timeout=_TIMEOUT_S)
    if r.returncode != 0:
        raise SignatureError(f"{signature.name} is not a valid signature over {path.name}",
                             hint="the file or its signature was altered; nothing was installed")
    signer = _signer(r.stdout + r.stderr)
    with tempfile.TemporaryDirectory(prefix="vz-signers-") as tmp:
        allowed = Path(tmp) / "allowed_signers"
        allowed.write_text("".join(k.allowed_signers_line() + "\n" for k in keys))
        found = run(["ssh-keygen", "-Y", "find-principals", "-s", signature, "-f", allowed], check=False,
                    timeout=_TIMEOUT_S)
        if found.returncode != 0:
            origins = ", ".join(str(k.origin) for k in keys)
            raise UntrustedKeyError(f"{path.name} is signed by a key that is not trusted ({signer}); "
                                    f"trusted: {origins}",
                                    hint="get the publisher's key over a channel you trust, then --trusted-key")
        with open(path, "rb") as data:
            ok = run(["ssh-keygen", "-Y", "verify", "-f", allowed, "-I", PRINCIPAL, "-n", NAMESPACE,
                      "-s", signature], stdin=data, check=False, timeout=_TIMEOUT_S)
    if ok.returncode != 0:
        raise SignatureError(f"{signature.name} does not verify over {path.name}: {_last_line(ok.stderr)}",
                             hint="nothing was installed")


def _signer(output: bytes) -> str:
    m = re.search(rb"with (\S+ key \S+)", output)
    return m.group(1).decode() if m else "unknown key"


def _last_line(stderr: bytes | None) -> str:
    lines = (stderr or b"").decode(errors="replace").strip().splitlines()
    return lines[-1] if lines else "no output"


def fingerprint(public_key: Path) -> str:
    """``SHA256:…`` of a public key, as ``ssh-keygen -l`` prints it."""
    r = run(["ssh-keygen", "-l", "-f", public_key], check=False, timeout=_TIMEOUT_S)
    fields = r.stdout.decode(errors="replace").split()
    if r.returncode != 0 or len(fields) < 2:
        raise UntrustedKeyError(f"{public_key} is not an OpenSSH public key", hint="pass KEY.pub")
    return fields[1]

