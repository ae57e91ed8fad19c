"""``vz-linux``: the root command. Each stage's commands live in their own module, named here and
imported only when invoked (:class:`~.entry.LazyGroup`), so ``--version`` and ``--help`` start fast."""

from __future__ import annotations

from typing import NoReturn

import click

from ..version import __version__
from .entry import LazyCommand, LazyGroup, run_cli, setup_logging

# name -> where it lives and its short help (tests/test_startup.py checks both against the command)
COMMANDS: dict[str, LazyCommand] = {
    "build": LazyCommand("vz_linux.cli.build_cmds:build",
                         "Build guest-kernel bundles: checked config, cached kernel, userland, version.json."),
    "config": LazyCommand("vz_linux.cli.build_cmds:config_cmd",
                          "Resolve and check a profile's kernel config without compiling."),
    "install": LazyCommand("vz_linux.cli.bundle_cmds:install_cmd",
                           "Validate the bundle in BUNDLE_DIR and install it atomically, or install a signed "
                           "release (--from)."),
    "ensure": LazyCommand("vz_linux.cli.bundle_cmds:ensure_cmd",
                          "Find, validate and install the bundle for a profile (the selection API's resolution "
                          "order)."),
    "verify": LazyCommand("vz_linux.cli.bundle_cmds:verify_cmd",
                          "Fully verify the bundle in BUNDLE_DIR: metadata, agent, capabilities, every checksum "
                          "(re-hashed)."),
    "run": LazyCommand("vz_linux.cli.run_cmds:run_cmd",
                       "Start a guest, run COMMAND in it (after `--`), print its output, exit with its exit code."),
    "keygen": LazyCommand("vz_linux.cli.dist_cmds:keygen_cmd",
                          "Make a release signing key pair (OpenSSH ed25519): KEY (private) and KEY.pub."),
    "release": LazyCommand("vz_linux.cli.dist_cmds:release_cmd",
                           "Write release assets for BUNDLE_DIR...: tarballs, .sha256 sidecars, SHA256SUMS, "
                           "provenance, signatures."),
    "push": LazyCommand("vz_linux.cli.dist_cmds:push_cmd",
                        "Push bundles (one profile, one per arch) to REF as OCI artifacts under one image index."),
    "pull": LazyCommand("vz_linux.cli.dist_cmds:pull_cmd",
                        "Pull the bundle REF names (HOST/REPO[:TAG][@sha256:…]); blobs and checksums are all "
                        "verified."),
}


@click.group(cls=LazyGroup, lazy_commands=COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Log every external command.")
@click.version_option(__version__)
def cli(verbose: bool) -> None:
    """Build, verify, select and boot Linux guest-kernel bundles for micro-VMs."""
    setup_logging(verbose)


def main(args: list[str] | None = None) -> NoReturn:
    run_cli(cli, "vz-linux", args)
