"""``vz-linux install --from URL_OR_DIR --version V``: install a signed release (docs/distribution.md,
"Installing a release"), with the seed's installer semantics.

1. ``SHA256SUMS`` and ``SHA256SUMS.sig`` are fetched; the signature must verify against a trusted
   key (:mod:`vz_linux.bundle.signing`).
2. The assets of the wanted profiles for this host's arch are picked from ``SHA256SUMS``
   (``VZ_LINUX_PROFILE`` / ``--profile``: ``all`` — the default — ``developer`` or ``container``;
   the developer bundle may come under the seed's legacy name; a release without a container asset
   installs the developer one and warns when ``all`` was asked).
3. Each asset is fetched (:mod:`vz_linux.bundle.fetch`: resumable, size-capped, sha256 checked
   against ``SHA256SUMS``), unpacked into a staging dir (regular files with plain names only) and
   validated like ``vz-linux verify`` (profile, agent, capabilities, every checksum, arch).
4. Only when every wanted asset passed is anything installed: each profile atomically into
   ``~/.vz/linux/<profile>/`` (:func:`install_bundle`), the developer profile also as the legacy
   ``~/.vz/linux/`` (:func:`install_legacy`).
"""

from __future__ import annotations

import contextlib
import gzip
import os
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import filelock

from .. import layout
from ..arch import Architecture
from ..errors import InstallError, InvalidConfigError, ReleaseAssetMissingError, UnsafeBundleError
from ..profiles import KernelProfile
from . import signing
from .fetch import DEFAULT_MAX_BYTES, Fetcher, Progress, ReleaseSource
from .install import LOCK_TIMEOUT_S, install_bundle, install_legacy
from .model import KernelBundle, validate_bundle
from .release import SUMS, asset_name, normalise_version, parse_sums

PROFILE_ENV = "VZ_LINUX_PROFILE"
SKIP_ENV = "VZ_NO_LINUX"
ALL = "all"
_MAX_MEMBERS = 16


def skip_requested() -> bool:
    """``VZ_NO_LINUX=1`` (the seed's switch): the installer installs nothing and succeeds."""
    return os.environ.get(SKIP_ENV, "").strip() not in ("", "0")


def wanted_profiles(choice: str | None) -> tuple[str, tuple[KernelProfile, ...]]:
    """``--profile``, else ``$VZ_LINUX_PROFILE``, else ``all`` → (the choice, the profiles it means)."""
    raw = (choice or os.environ.get(PROFILE_ENV) or ALL).strip()
    if raw == ALL:
        return ALL, (KernelProfile.developer, KernelProfile.container)
    try:
        return raw, (KernelProfile.parse(raw),)
    except InvalidConfigError:
        raise InvalidConfigError(f"unknown profile {raw!r} for the installer; valid: all, "
                                 f"{', '.join(p.value for p in KernelProfile)}",
                                 hint=f"set --profile or ${PROFILE_ENV}") from None


@dataclass(frozen=True)
class InstallFromOptions:
    source: str
    version: str
    profile: str | None = None  # None: $VZ_LINUX_PROFILE, else all
    trusted_keys: tuple[Path, ...] = ()  # empty: ~/.vz/linux/trusted-keys/*.pub
    install_root: Path | None = None  # None: ~/.vz/linux
    arch: Architecture = field(default_factory=Architecture.host)
    max_bytes: int = DEFAULT_MAX_BYTES
    require_exact_agent_version: bool = True


@dataclass(frozen=True)
class ReleaseInstall:
    installed: dict[KernelProfile, KernelBundle]
    legacy: KernelBundle | None
    warnings: tuple[str, ...]


def _plan(sums: dict[str, str], version: str, arch: Architecture, choice: str,
          profiles: Sequence[KernelProfile], where: str) -> tuple[dict[KernelProfile, str], list[str]]:
    """profile → asset name to install, and the warnings (a missing container asset under ``all``)."""
    plan: dict[KernelProfile, str] = {}
    warnings: list[str] = []
    for p in profiles:
        names = [asset_name(p, version, arch)]
        if p is KernelProfile.developer:
            names.append(asset_name(None, version, arch))
        found = next((n for n in names if n in sums), None)
        if found is not None:
            plan[p] = found
        elif choice == ALL and p is KernelProfile.container and plan:
            warnings.append(f"release v{version} at {where} has no container bundle for {arch.value} "
                            "(an older release?): installed the developer profile only")
        else:
            raise ReleaseAssetMissingError(
                f"release at {where} has no {p.value} bundle v{version} for {arch.value} "
                f"(looked for {' or '.join(names)} in {SUMS})", hint="check --version and --profile")
    return plan, warnings


def _unpack(tarball: Path, dest: Path, max_bytes: int) -> None:
    """Unpack a release tarball: regular files with plain names at the top level, nothing else."""
    dest.mkdir()
    try:
        with tarfile.open(tarball, mode="r:gz") as tar:
            members = tar.getmembers()
            if len(members) > _MAX_MEMBERS or sum(m.size for m in members) > max_bytes:
                raise UnsafeBundleError(f"{tarball.name} holds more than a bundle", hint="nothing was installed")
            for m in members:
                if not m.isreg() or "/" in m.name or m.name in ("", ".", "..") or (dest / m.name).exists():
                    raise UnsafeBundleError(f"{tarball.name}: entry {m.name!r} is not a plain file of a bundle",
                                            hint="the release is malformed or hostile; nothing was installed")
                src = tar.extractfile(m)
                assert src is not None  # a regular member always has data
                with src, open(dest / m.name, "xb") as out:
                    shutil.copyfileobj(src, out)
                os.chmod(dest / m.name, (m.mode & 0o755) | 0o400)
    except (tarfile.TarError, gzip.BadGzipFile, zlib.error, EOFError) as e:
        raise UnsafeBundleError(f"{tarball.name} is not a valid .tar.gz: {e}",
                                hint="the release is malformed; nothing was installed") from None


def _stage(fetcher: Fetcher, plan: dict[KernelProfile, str], sums: dict[str, str], staging: Path,
           options: InstallFromOptions) -> dict[KernelProfile, Path]:
    """Fetch, check, unpack and validate every planned asset into ``staging``; nothing is installed."""
    staged: dict[KernelProfile, Path] = {}
    for p, name in plan.items():
        fetcher.fetch(name, sums[name], staging / name)
        _unpack(staging / name, staging / p.value, options.max_bytes)
        bundle = validate_bundle(staging / p.value, profile=p,
                                 require_exact_agent_version=options.require_exact_agent_version)
        if bundle.metadata.arch is not options.arch:
            raise UnsafeBundleError(f"{name} holds a {bundle.metadata.arch.value} bundle, not {options.arch.value}",
                                    hint="the release is mislabelled; nothing was installed")
        staged[p] = staging / p.value
    return staged


def _verified_sums(fetcher: Fetcher, options: InstallFromOptions, staging: Path) -> dict[str, str]:
    keys = signing.trusted_keys(options.trusted_keys)
    sums_path, sig_path = staging / SUMS, signing.signature_path(staging / SUMS)
    sums_path.write_bytes(fetcher.read_small(SUMS))
    with contextlib.suppress(ReleaseAssetMissingError):  # verify_file reports a missing signature as such
        sig_path.write_bytes(fetcher.read_small(sig_path.name))
    signing.verify_file(sums_path, sig_path, keys)
    return parse_sums(sums_path.read_bytes().decode(errors="replace"), fetcher.source.where(SUMS))


def install_release(options: InstallFromOptions, progress: Progress | None = None,
                    warn: Callable[[str], None] | None = None) -> ReleaseInstall:
    """Install the wanted profiles of a signed release; all or nothing (the module's docstring)."""
    version = normalise_version(options.version)
    choice, profiles = wanted_profiles(options.profile)
    root = options.install_root or layout.default_install_root()
    fetcher = Fetcher(ReleaseSource.parse(options.source), options.max_bytes, progress)
    root.mkdir(parents=True, exist_ok=True)
    # One installer at a time per root: under this lock, staging dirs left by a crashed one are stale.
    lock = filelock.FileLock(str(root / ".release.lock"), timeout=LOCK_TIMEOUT_S)
    try:
        lock.acquire()
    except filelock.Timeout:
        raise InstallError(f"another installer has held {root} for {LOCK_TIMEOUT_S:.0f}s",
                           hint="wait for it to finish") from None
    try:
        for stale in root.glob(".release-*"):
            shutil.rmtree(stale, ignore_errors=True)
        return _install_locked(options, fetcher, version, choice, profiles, root, warn)
    finally:
        lock.release()


def _install_locked(options: InstallFromOptions, fetcher: Fetcher, version: str, choice: str,
                    profiles: tuple[KernelProfile, ...], root: Path,
                    warn: Callable[[str], None] | None) -> ReleaseInstall:
    staging = Path(tempfile.mkdtemp(prefix=".release-", dir=root))
    try:
        sums = _verified_sums(fetcher, options, staging)
        plan, warnings = _plan(sums, version, options.arch, choice, profiles, options.source)
        staged = _stage(fetcher, plan, sums, staging, options)
        installed = {p: install_bundle(d, root / p.value, profile=p,
                                       require_exact_agent_version=options.require_exact_agent_version)
                     for p, d in staged.items()}
        legacy = None
        if KernelProfile.developer in staged:
            legacy = install_legacy(staged[KernelProfile.developer], root,
                                    require_exact_agent_version=options.require_exact_agent_version)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    for w in warnings:
        if warn is not None:
            warn(w)
    return ReleaseInstall(installed, legacy, tuple(warnings))
