"""``vz-linux keygen``, ``release``, ``push``, ``pull`` and ``install --from``: thin shims over
:mod:`vz_linux.bundle` (signing, release, installer, transfer). docs/distribution.md."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from ..arch import Architecture
from ..build.kconfig import fragment_paths
from ..bundle import installer, signing
from ..bundle.install import install_bundle
from ..bundle.model import load_bundle
from ..bundle.registry import RegistryClient
from ..bundle.release import make_release
from ..bundle.transfer import BundleStore, pull, push
from ..errors import InvalidConfigError
from ..layout import source_checkout
from ..profiles import KernelProfile
from .common import download_progress, out_console, warn

_PATH = click.Path(path_type=Path)
_plain_http = click.option("--plain-http", is_flag=True,
                           help="Speak plain HTTP to a registry that is not on a loopback address.")
_no_version_check = click.option("--no-version-check", is_flag=True,
                                 help="Accept a bundle built by another release (agent version/protocol).")
_json = click.option("--json", "as_json", is_flag=True, help="Machine-readable output on stdout.")


def _print_json(data: dict[str, Any]) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True))


@click.command("keygen")
@click.option("--out", "key", type=_PATH, required=True, metavar="KEY",
              help="Private key file to write; the public key goes to KEY.pub.")
def keygen_cmd(key: Path) -> None:
    """Make a release signing key pair (OpenSSH ed25519): KEY (private) and KEY.pub."""
    pub = signing.generate_key(key)
    out_console.print(f"wrote {key} (private: keep it secret) and {pub} ({signing.fingerprint(pub)})",
                      markup=False, soft_wrap=True)
    out_console.print(f"users trust it with: vz-linux install --from … --trusted-key {pub.name} "
                      f"(or by copying it into ~/.vz/linux/trusted-keys/)", markup=False, soft_wrap=True)


def _fragments(bundle_dirs: tuple[Path, ...]) -> dict[tuple[KernelProfile, Architecture], list[Path]]:
    """Each bundle's config fragments from this checkout, for the provenance (none outside a checkout)."""
    out: dict[tuple[KernelProfile, Architecture], list[Path]] = {}
    if source_checkout() is None:
        return out
    for d in bundle_dirs:
        m = load_bundle(d).metadata
        try:
            out[m.profile, m.arch] = fragment_paths(m.profile, m.arch)
        except InvalidConfigError:
            return {}
    return out


@click.command("release")
@click.argument("bundle_dirs", nargs=-1, required=True, type=_PATH)
@click.option("--version", "release_version", required=True, help="Release version, e.g. 1.2.0.")
@click.option("--out", type=_PATH, required=True, help="New (or empty) directory for the release assets.")
@click.option("--signing-key", type=_PATH, help="Private key from `vz-linux keygen` (else: unsigned).")
@_no_version_check
@_json
def release_cmd(bundle_dirs: tuple[Path, ...], release_version: str, out: Path, signing_key: Path | None,
                no_version_check: bool, as_json: bool) -> None:
    """Write release assets for BUNDLE_DIR...: tarballs, .sha256 sidecars, SHA256SUMS, provenance, signatures."""
    rel = make_release(list(bundle_dirs), release_version, out, signing_key=signing_key,
                       fragments=_fragments(bundle_dirs), checkout=source_checkout(),
                       require_exact_agent_version=not no_version_check)
    if not rel.signed:
        warn("vz-linux", "the release is not signed (no --signing-key): `vz-linux install --from` refuses it")
    if as_json:
        _print_json({"ok": True, "out": str(rel.out), "version": rel.version, "assets": rel.assets,
                     "signed": rel.signed, "files": rel.files()})
        return
    out_console.print(f"release v{rel.version} in {rel.out}:", markup=False)
    for name in rel.files():
        out_console.print(f"  {name}", markup=False)


@click.command("push")
@click.argument("args", nargs=-1, required=True, metavar="BUNDLE_DIR... REF")
@_plain_http
@_no_version_check
@_json
def push_cmd(args: tuple[str, ...], plain_http: bool, no_version_check: bool, as_json: bool) -> None:
    """Push bundles (one profile, one per arch) to REF as OCI artifacts under one image index."""
    if len(args) < 2:
        raise click.UsageError("give at least one BUNDLE_DIR and the REF to push to")
    pushed = push([Path(a) for a in args[:-1]], args[-1], client=RegistryClient(plain_http=plain_http),
                  require_exact_agent_version=not no_version_check)
    if as_json:
        _print_json({"ok": True, "reference": str(pushed.reference), "index_digest": pushed.index_digest,
                     "profile": pushed.profile.value,
                     "manifests": {a.value: d for a, d in pushed.manifests.items()}})
        return
    out_console.print(f"pushed {pushed.profile.value} ({', '.join(a.value for a in pushed.manifests)}) "
                      f"as {pushed.reference}", markup=False, soft_wrap=True)
    for arch, digest in pushed.manifests.items():
        out_console.print(f"  {arch.value}: {digest}", markup=False)


@click.command("pull")
@click.argument("reference")
@click.option("--arch", help="Platform to pull (default: this host's).")
@click.option("--install", "do_install", is_flag=True, help="Also install it (like `vz-linux install`).")
@click.option("--install-dir", type=_PATH, help="Default: ~/.vz/linux/<the bundle's profile>/.")
@_plain_http
@_no_version_check
@_json
def pull_cmd(reference: str, arch: str | None, do_install: bool, install_dir: Path | None, plain_http: bool,
             no_version_check: bool, as_json: bool) -> None:
    """Pull the bundle REF names (HOST/REPO[:TAG][@sha256:…]); blobs and checksums are all verified."""
    chosen = Architecture.parse(arch) if arch else Architecture.host()
    if do_install and chosen is not Architecture.host() and install_dir is None:
        raise InvalidConfigError(f"--install of a {chosen.value} bundle needs --install-dir "
                                 f"(~/.vz/linux/ holds this host's bundles)")
    got = pull(reference, chosen, store=BundleStore.beside(install_dir),
               client=RegistryClient(plain_http=plain_http))
    installed = None
    if do_install:
        installed = install_bundle(got.root, install_dir, profile=got.metadata.profile,
                                   require_exact_agent_version=not no_version_check)
    data = {"ok": True, "reference": str(got.reference), "manifest_digest": got.manifest_digest,
            "index_digest": got.index_digest, "root": str(got.root), "profile": got.metadata.profile.value,
            "arch": got.metadata.arch.value, "from_store": got.from_store,
            "installed": str(installed.root) if installed else None}
    if as_json:
        _print_json(data)
        return
    where = "already in the store" if got.from_store else "pulled"
    out_console.print(f"{where}: {got.reference} → {got.root}", markup=False, soft_wrap=True)
    if installed is not None:
        out_console.print(f"installed into {installed.root}", markup=False)


def install_from(source: str, release_version: str | None, profile: str | None, trusted_keys: tuple[Path, ...],
                 install_root: Path | None, max_size_mib: int, no_version_check: bool) -> dict[str, Any] | None:
    """``vz-linux install --from``: the installer; None when ``VZ_NO_LINUX`` says to skip."""
    if installer.skip_requested():
        warn("vz-linux", f"${installer.SKIP_ENV} is set: skipping the Linux bundles")
        return None
    if not release_version:
        raise click.UsageError("--from needs --version V")
    options = installer.InstallFromOptions(
        source=source, version=release_version, profile=profile, trusted_keys=trusted_keys,
        install_root=install_root, max_bytes=max_size_mib << 20, require_exact_agent_version=not no_version_check)
    with download_progress() as progress:
        result = installer.install_release(options, progress=progress, warn=lambda w: warn("vz-linux", w))
    return {"ok": True, "installed": {p.value: b.summary() for p, b in result.installed.items()},
            "legacy": str(result.legacy.root) if result.legacy else None, "warnings": list(result.warnings)}
