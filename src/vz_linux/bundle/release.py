"""Release assets (docs/distribution.md, "Release format"): what ``vz-linux release`` writes and
what ``vz-linux install --from`` reads.

Per (profile, arch) bundle, a tarball with the seed's name — ``vz-linux-<profile>-v<V>-<arch>.tar.gz``,
and for the developer bundle also the legacy ``vz-linux-v<V>-<arch>.tar.gz`` — each with a
``.sha256`` sidecar in ``sha256sum`` format; ``SHA256SUMS`` over every tarball; the provenance
statement ``provenance.intoto.json``; and, with a signing key, ``SHA256SUMS.sig`` and
``provenance.intoto.json.sig`` (:mod:`vz_linux.bundle.signing`).

Tarballs are deterministic: the bundle's files at the top level in sorted order, owner root:root
(0/0), mode 0644 (0755 for the OCI runtime), mtime = the bundle's ``built`` time, ustar format,
gzip with no name and header mtime 0. Two releases of the same bundles are byte-identical.
"""

from __future__ import annotations

import gzip
import os
import re
import shutil
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from .. import layout
from ..arch import Architecture
from ..errors import InvalidConfigError, ReleaseError
from ..fsutil import publish_dir
from ..hashing import sha256_file
from ..profiles import KernelProfile
from . import provenance, signing
from .model import KernelBundle, validate_bundle

SUMS = "SHA256SUMS"
PROVENANCE = "provenance.intoto.json"
SIDECAR_SUFFIX = ".sha256"
_VERSION = re.compile(r"^[0-9A-Za-z][0-9A-Za-z._+~-]{0,63}$")
_SUMS_LINE = re.compile(r"^([0-9a-f]{64}) [ *]([A-Za-z0-9._+~-]+)$")


def normalise_version(version: str) -> str:
    """``v1.2.3`` and ``1.2.3`` name the same release; the asset names carry ``v1.2.3``."""
    v = version[1:] if version.startswith("v") else version
    if not _VERSION.match(v):
        raise InvalidConfigError(f"release version {version!r} is not a plain version (e.g. 1.2.0)",
                                 hint="use letters, digits and . _ + ~ - only")
    return v


def asset_name(profile: KernelProfile | None, version: str, arch: Architecture) -> str:
    """The seed's asset name; ``profile=None`` is the legacy name (= the developer bundle)."""
    middle = f"{profile.value}-" if profile is not None else ""
    return f"vz-linux-{middle}v{normalise_version(version)}-{arch.value}.tar.gz"


def sums_line(sha256: str, name: str) -> str:
    """One line as ``sha256sum`` prints it (two spaces: text mode)."""
    return f"{sha256}  {name}\n"


def parse_sums(text: str, source: str = SUMS) -> dict[str, str]:
    """``SHA256SUMS`` → {file name: sha256}; any other line is an error (the file is signed: it is exact)."""
    out: dict[str, str] = {}
    for n, line in enumerate(text.splitlines(), start=1):
        m = _SUMS_LINE.match(line)
        if m is None or m.group(2) in out:
            raise ReleaseError(f"{source} line {n} is not a sha256sum line for a new plain file name: {line[:80]!r}",
                               hint="the release is malformed; ask its publisher")
        out[m.group(2)] = m.group(1)
    return out


def _mtime(bundle: KernelBundle) -> int:
    built = datetime.fromisoformat(bundle.metadata.built.replace("Z", "+00:00"))
    # A time without a zone is read as UTC, never as this machine's local time.
    return int((built if built.tzinfo else built.replace(tzinfo=UTC)).timestamp())


def write_tarball(bundle: KernelBundle, dest: Path) -> None:
    """The bundle's files (artifacts + version.json) as a deterministic .tar.gz at ``dest``."""
    mtime = _mtime(bundle)
    names = sorted([*bundle.metadata.artifact_checksums(), layout.METADATA])
    with open(dest, "xb") as raw, \
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name in names:
            path = bundle.root / name
            info = tarfile.TarInfo(name)
            info.size = path.stat().st_size
            info.mtime = mtime
            info.mode = 0o755 if name == bundle.metadata.oci_runtime.name else 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            with open(path, "rb") as f:
                tar.addfile(info, f)


@dataclass(frozen=True)
class Release:
    out: Path
    version: str
    assets: dict[str, str]  # tarball name -> sha256
    signed: bool

    def files(self) -> list[str]:
        return sorted(p.name for p in self.out.iterdir())


def _load(bundle_dirs: Sequence[Path], require_exact_agent_version: bool) -> list[KernelBundle]:
    bundles: dict[tuple[KernelProfile, Architecture], KernelBundle] = {}
    for d in bundle_dirs:
        b = validate_bundle(Path(d), require_exact_agent_version=require_exact_agent_version)
        key = (b.profile, b.metadata.arch)
        if key in bundles:
            raise ReleaseError(f"{bundles[key].root} and {b.root} are both {key[0].value}/{key[1].value} bundles",
                               hint="give one bundle per (profile, arch)")
        bundles[key] = b
    if not bundles:
        raise ReleaseError("no bundle given", hint="vz-linux release BUNDLE_DIR... --version V --out DIR")
    return [bundles[k] for k in sorted(bundles)]


def _check_out(out: Path) -> None:
    if out.is_symlink() or (out.exists() and (not out.is_dir() or any(out.iterdir()))):
        raise ReleaseError(f"{out} exists and is not an empty directory",
                           hint="release into a new directory; an existing release is never overwritten")


def _write_assets(bundles: Sequence[KernelBundle], version: str, stage: Path) -> dict[str, str]:
    assets: dict[str, str] = {}
    for b in bundles:
        name = asset_name(b.profile, version, b.metadata.arch)
        write_tarball(b, stage / name)
        names = [name]
        if b.profile is KernelProfile.developer:  # the seed's legacy name: the same bytes
            legacy = asset_name(None, version, b.metadata.arch)
            shutil.copyfile(stage / name, stage / legacy)
            names.append(legacy)
        sha = sha256_file(stage / name)
        for n in names:
            assets[n] = sha
            (stage / (n + SIDECAR_SUFFIX)).write_text(sums_line(sha, n))
    (stage / SUMS).write_text("".join(sums_line(sha, n) for n, sha in sorted(assets.items())))
    return assets


def make_release(
    bundle_dirs: Sequence[Path],
    version: str,
    out: Path,
    *,
    signing_key: Path | None = None,
    fragments: provenance.Fragments | None = None,
    checkout: Path | None = None,
    require_exact_agent_version: bool = True,
) -> Release:
    """Write the release of ``bundle_dirs`` as ``version`` into the new directory ``out``, all or nothing.

    ``fragments`` (per (profile, arch), the config fragments of the checkout) go into the provenance.
    """
    version = normalise_version(version)
    out = Path(os.path.abspath(out))
    _check_out(out)
    bundles = _load(bundle_dirs, require_exact_agent_version)
    if signing_key is not None and not signing_key.is_file():
        raise ReleaseError(f"signing key {signing_key} does not exist",
                           hint="make one with `vz-linux keygen --out KEY`")
    with publish_dir(out, replace=True, prefix=f".{out.name}.release-") as stage:
        assets = _write_assets(bundles, version, stage)
        doc = provenance.statement(version, [b.metadata for b in bundles], assets, fragments or {}, checkout)
        (stage / PROVENANCE).write_bytes(provenance.to_bytes(doc))
        if signing_key is not None:
            signing.sign_file(signing_key, stage / SUMS)
            signing.sign_file(signing_key, stage / PROVENANCE)
        for entry in stage.iterdir():
            entry.chmod(0o644)
    return Release(out, version, assets, signing_key is not None)
