"""``vz oci pull|images|rmi`` and the image options ``run``/``create`` share (docs/oci.md, "Images
from registries"). The root CLI (``cli/vz.py``) adds these commands to its ``oci`` group."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from ..arch import Architecture
from ..oci.config import RuntimeConfig, default_data_dir
from ..oci.images import list_images, remove_image
from ..oci.pull import PullOptions, PullPolicy, parse_reference, pull
from ..profiles import KernelProfile
from .common import print_listing

_PROFILES = click.Choice([p.value for p in KernelProfile])


def _platform_options(f: Any) -> Any:
    opts = [
        click.option("--tls-verify/--no-tls-verify", "tls_verify", default=None,
                     help="Require HTTPS with a verified certificate (default: yes, except for a "
                          "registry on a loopback address, spoken to over plain HTTP)."),
        click.option("--override-arch", default=None, metavar="ARCH",
                     help="Pull the image for this OCI architecture (amd64, arm64) instead of the guest's."),
        click.option("--override-os", default=None, metavar="OS", help="Pull the image for this OS (default linux)."),
        click.option("--authfile", "auth_file", type=click.Path(path_type=Path), default=None,
                     help="Registry credentials (default $REGISTRY_AUTH_FILE, else ~/.docker/config.json)."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def pull_options(f: Any) -> Any:
    """``--pull`` and the platform/TLS/credential options of ``run``/``create``."""
    f = _platform_options(f)
    return click.option("--pull", "pull_policy", type=click.Choice([p.value for p in PullPolicy]),
                        default=PullPolicy.missing.value, show_default=True,
                        help="Pull a registry IMAGE: when missing from the store, always, or never.")(f)


def pull_options_from(pull_policy: str = PullPolicy.missing.value, tls_verify: bool | None = None,
                      override_arch: str | None = None, override_os: str | None = None,
                      auth_file: Path | None = None) -> PullOptions:
    return PullOptions(policy=PullPolicy(pull_policy), tls_verify=tls_verify, override_arch=override_arch,
                       override_os=override_os, auth_file=auth_file)


def _cfg(data_dir: Path | None, profile: str | None = None) -> RuntimeConfig:
    return RuntimeConfig(linux_profile=KernelProfile.parse(profile) if profile else None,
                         data_dir=data_dir or default_data_dir())


_data_dir = click.option("--data-dir", type=click.Path(path_type=Path), default=None,
                         help="Container and image state (default ~/.vz/oci, or $VZ_OCI_DATA_DIR).")


@click.command(name="pull")
@_platform_options
@click.option("--kernel-profile", "profile", type=_PROFILES, default=None,
              help="The guest whose architecture picks the platform (default: developer).")
@click.option("-q", "--quiet", is_flag=True, help="Print only the image's digest.")
@_data_dir
@click.argument("image")
def pull_cmd(tls_verify: bool | None, override_arch: str | None, override_os: str | None,
             auth_file: Path | None, profile: str | None, quiet: bool, data_dir: Path | None, image: str) -> int:
    """Pull IMAGE (HOST[:PORT]/REPO[:TAG][@DIGEST] or docker://…) into the local image store."""
    cfg = _cfg(data_dir, profile)
    ref = parse_reference(image, local=False)
    assert ref is not None  # local=False: a reference or an ImageReferenceError
    opts = pull_options_from(PullPolicy.always.value, tls_verify, override_arch, override_os, auth_file)
    # The platform only needs the guest's arch when not overridden: no bundle lookup then.
    guest = Architecture.host() if override_arch else cfg.resolve_kernel().metadata.arch
    stored = pull(cfg.image_store(), ref, opts, guest)
    click.echo(stored.digest if quiet else f"{ref}: {stored.digest} ({stored.platform}, {stored.size} bytes)")
    return 0


@click.command(name="images")
@click.option("--json", "as_json", is_flag=True)
@click.option("--digests", is_flag=True, help="Show full digests.")
@_data_dir
def images_cmd(as_json: bool, digests: bool, data_dir: Path | None) -> int:
    """List the images in the local store."""
    rows = list_images(_cfg(data_dir))
    if as_json:
        click.echo(json.dumps([r.to_json() for r in rows], indent=2))
        return 0
    print_listing(("REPOSITORY", "TAG", "DIGEST" if digests else "IMAGE ID", "PLATFORM", "SIZE", "PULLED"),
                  ((r.repository, r.tag, r.digest if digests else r.image_id, r.platform,
                    f"{r.size / 2**20:.1f} MiB", r.pulled) for r in rows))
    return 0


@click.command(name="rmi")
@click.option("-f", "--force", is_flag=True, help="Remove even while a running container uses it.")
@_data_dir
@click.argument("images", nargs=-1, required=True)
def rmi_cmd(force: bool, data_dir: Path | None, images: tuple[str, ...]) -> int:
    """Untag a reference (REPO:TAG) or delete an image by id; unreferenced blobs are removed."""
    cfg = _cfg(data_dir)
    for name in images:
        gone = remove_image(cfg, name, force=force)
        if "/" in name:
            click.echo(f"Untagged: {name}")
        for img in gone:
            click.echo(f"Deleted: {img.digest}")
    return 0


COMMANDS = (pull_cmd, images_cmd, rmi_cmd)
