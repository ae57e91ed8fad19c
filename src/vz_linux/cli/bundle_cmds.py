"""``vz-linux install``, ``ensure``, ``verify``: thin shims over :mod:`vz_linux.bundle` (install, resolve, model)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from ..bundle.fetch import DEFAULT_MAX_BYTES
from ..bundle.install import install_bundle
from ..bundle.model import KernelBundle, validate_bundle
from ..bundle.resolve import KernelBundleOptions, ensure_kernel_bundle, resolve
from ..errors import VzLinuxError
from ..profiles import KernelCapability, KernelProfile
from ..vm.boot_verify import BootVerification, probe_failure, verify_boot
from .common import out_console
from .dist_cmds import install_from

_PATH = click.Path(path_type=Path, file_okay=True, dir_okay=True)


def _capabilities(values: tuple[str, ...]) -> frozenset[KernelCapability]:
    # --require a,b and --require a --require b both work.
    return KernelCapability.parse_list(name for v in values for name in v.split(","))


def _profile(name: str | None) -> KernelProfile | None:
    return KernelProfile.parse(name) if name else None


def _print_json(data: dict[str, Any]) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True))


def _show(bundle: KernelBundle, title: str, sizes: bool = True) -> None:
    m = bundle.metadata
    out_console.print(title, soft_wrap=True, markup=False)
    table = Table(show_header=True, header_style="bold")
    table.add_column("file")
    table.add_column("size", justify="right")
    table.add_column("sha256", no_wrap=True)
    for name, path in bundle.artifact_paths().items():
        size = f"{path.stat().st_size:,}" if sizes and path.exists() else "?"
        table.add_row(name, size, m.artifact_checksums()[name])
    out_console.print(table)
    out_console.print(
        f"profile [bold]{bundle.profile.value}[/] ({m.security_profile}), arch {m.arch.value}, "
        f"kernel {m.kernel_release or m.kernel}, agent {m.agent} (protocol {m.agent_protocol_revision}), "
        f"{m.oci_runtime.name} {m.oci_runtime.version}",
        soft_wrap=True,
    )
    out_console.print("capabilities: " + " ".join(sorted(c.value for c in bundle.capabilities)), soft_wrap=True)
    if m.unknown_capabilities:
        out_console.print("ignored (unknown) capabilities: " + " ".join(m.unknown_capabilities), soft_wrap=True)


_require = click.option("--require", "require", multiple=True, metavar="CAP[,CAP…]",
                        help="Capabilities needed on top of the profile's contract.")
_no_version_check = click.option("--no-version-check", is_flag=True,
                                 help="Accept a bundle built by another release (agent version/protocol).")
_json = click.option("--json", "as_json", is_flag=True, help="Machine-readable output on stdout.")


@click.command("install")
@click.argument("bundle_dir", type=_PATH, required=False)
@click.option("--from", "from_", metavar="URL_OR_DIR",
              help="Install a signed release from an http(s) URL or a directory (with --version).")
@click.option("--version", "release_version", metavar="V", help="The release version to install (with --from).")
@click.option("--trusted-key", "trusted_keys", multiple=True, type=_PATH, metavar="KEY.pub",
              help="Public key the release must be signed with (default: ~/.vz/linux/trusted-keys/*.pub).")
@click.option("--max-size", "max_size_mib", type=click.IntRange(1), default=DEFAULT_MAX_BYTES >> 20,
              show_default=True, help="Refuse a release asset larger than this many MiB (with --from).")
@click.option("--install-root", type=_PATH, help="With --from: instead of ~/.vz/linux (profiles go in <root>/<profile>/).")
@click.option("--install-dir", type=_PATH, help="Default: ~/.vz/linux/<the bundle's profile>/.")
@click.option("--profile", help="With BUNDLE_DIR: refuse the bundle unless it is this profile. With --from: "
              "all, developer or container (default $VZ_LINUX_PROFILE, else all).")
@_require
@_no_version_check
@_json
def install_cmd(bundle_dir: Path | None, from_: str | None, release_version: str | None,
                trusted_keys: tuple[Path, ...], max_size_mib: int, install_root: Path | None,
                install_dir: Path | None, profile: str | None, require: tuple[str, ...],
                no_version_check: bool, as_json: bool) -> None:
    """Validate the bundle in BUNDLE_DIR and install it atomically, or install a signed release (--from)."""
    if from_ is not None:
        if bundle_dir is not None or install_dir is not None or require:
            raise click.UsageError("--from installs a release: BUNDLE_DIR, --install-dir and --require do not apply")
        result = install_from(from_, release_version, profile, trusted_keys, install_root, max_size_mib,
                              no_version_check)
        if as_json:
            _print_json(result or {"ok": True, "skipped": True, "installed": {}})
        elif result is not None:
            for name, summary in result["installed"].items():
                out_console.print(f"installed {name} into {summary['root']} (kernel {summary['kernel_release']})",
                                  markup=False, soft_wrap=True)
            if result["legacy"]:
                out_console.print(f"installed developer as the legacy default {result['legacy']}", markup=False)
        return
    if bundle_dir is None:
        raise click.UsageError("give BUNDLE_DIR, or --from URL_OR_DIR --version V")
    if release_version is not None or trusted_keys or install_root is not None:
        raise click.UsageError("--version, --trusted-key and --install-root go with --from")
    bundle = install_bundle(bundle_dir, install_dir, profile=_profile(profile),
                            required_capabilities=_capabilities(require),
                            require_exact_agent_version=not no_version_check)
    if as_json:
        _print_json({"ok": True, **bundle.summary()})
    else:
        _show(bundle, f"installed {bundle_dir} → {bundle.root}")


@click.command("ensure")
@click.option("--profile", default=KernelProfile.developer.value, show_default=True,
              help=f"One of: {', '.join(p.value for p in KernelProfile)}.")
@_require
@click.option("--install-dir", type=_PATH, help="Default: ~/.vz/linux/<profile>/.")
@click.option("--bundle-dir", type=_PATH, help="Bundle to install (else $VZ_LINUX_<PROFILE>_BUNDLE_DIR, …).")
@click.option("--reference", metavar="HOST/REPO[:TAG][@sha256:…]",
              help="Registry reference to install (else $VZ_LINUX_<PROFILE>_REFERENCE); a stored digest pin "
                   "needs no network.")
@_no_version_check
@_json
def ensure_cmd(profile: str, require: tuple[str, ...], install_dir: Path | None, bundle_dir: Path | None,
               reference: str | None, no_version_check: bool, as_json: bool) -> None:
    """Find, validate and install the bundle for a profile (the selection API's resolution order)."""
    options = KernelBundleOptions(
        profile=KernelProfile.parse(profile),
        required_capabilities=_capabilities(require),
        install_dir=install_dir,
        bundle_dir=bundle_dir,
        require_exact_agent_version=not no_version_check,
        reference=reference,
    )
    res = resolve(options)
    bundle = ensure_kernel_bundle(options)
    if as_json:
        source = {"source": str(res.source) if res.source else res.reference, "source_reason": res.source_reason}
        _print_json({"ok": True, **bundle.summary(), **source})
    else:
        origin = res.source or res.reference
        where = f"from {origin} ({res.source_reason})" if origin else "already installed"
        _show(bundle, f"{bundle.profile.value} bundle at {bundle.root}, {where}")


def probe_table(result: BootVerification) -> Table:
    """capability, declared, probe result, evidence: one row per capability probed."""
    table = Table(title=f"live capability probes: {result.kernel_release} ({result.accel})")
    for col in ("capability", "declared", "probe", "evidence"):
        table.add_column(col)
    for r in result.rows:
        outcome = "[green]pass[/]" if r.passed else ("[red]FAIL[/]" if r.declared else "absent")
        table.add_row(r.capability.value, "yes" if r.declared else "no", outcome, r.evidence)
    return table


@click.command("verify")
@click.argument("bundle_dir", type=_PATH)
@click.option("--profile", help="Refuse the bundle unless it is this profile.")
@_require
@_no_version_check
@click.option("--boot", is_flag=True, help="Also boot it and run every capability's live probe.")
@_json
def verify_cmd(bundle_dir: Path, profile: str | None, require: tuple[str, ...], no_version_check: bool,
               boot: bool, as_json: bool) -> None:
    """Fully verify the bundle in BUNDLE_DIR: metadata, agent, capabilities, every checksum (re-hashed)."""
    try:
        bundle = validate_bundle(bundle_dir, profile=_profile(profile), required_capabilities=_capabilities(require),
                                 require_exact_agent_version=not no_version_check)
        # check=False: print the whole table first, then fail with one line (below).
        boot_result = verify_boot(bundle, check=False) if boot else None
    except VzLinuxError as e:
        if as_json:
            _print_json({"ok": False, "error": type(e).__name__, "exit_code": e.exit_code, "message": e.one_line(),
                         "root": str(bundle_dir)})
        raise
    boot_ok = boot_result is None or boot_result.ok
    if as_json:
        data = {"ok": boot_ok, **bundle.summary()}
        if boot_result is not None:
            data["boot"] = boot_result.to_json()
        _print_json(data)
    else:
        _show(bundle, f"verified {bundle.root}: every checksum matches")
        if boot_result is not None:
            out_console.print(probe_table(boot_result))
    if boot_result is not None and not boot_ok:
        raise probe_failure(boot_result)
