"""What every console script needs to start, and nothing heavy: the one error handler, logging
setup, and :class:`LazyGroup`, a click group whose commands are imported only when invoked.

``vz-linux --version`` and ``--help`` import click and this module only; ``vz-linux build …``
imports the build pipeline then (docs/architecture.md, "Start-up").
"""

from __future__ import annotations

import importlib
import signal
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from types import FrameType
from typing import Any, NoReturn

import click

from ..errors import VzLinuxError

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


@dataclass(frozen=True)
class LazyCommand:
    """Where a command lives (``module:attribute``) and the line ``--help`` shows for it: the
    command's own short help (a test checks they agree)."""

    target: str
    short_help: str

    def load(self) -> click.Command:
        module, _, attr = self.target.partition(":")
        command = getattr(importlib.import_module(module), attr)
        if not isinstance(command, click.Command):
            raise TypeError(f"{self.target} is not a click command")
        return command


class LazyGroup(click.Group):
    """A group whose ``lazy_commands`` are imported when one is invoked (or asked for its help);
    the group's own ``--help`` lists them from the table without importing anything."""

    def __init__(self, *args: Any, lazy_commands: Mapping[str, LazyCommand] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy_commands: dict[str, LazyCommand] = dict(lazy_commands or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy_commands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        lazy = self.lazy_commands.pop(cmd_name, None)
        if lazy is not None:
            self.add_command(lazy.load(), cmd_name)
        return super().get_command(ctx, cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        limit = formatter.width - 6 - max((len(n) for n in self.list_commands(ctx)), default=0)
        rows: list[tuple[str, str]] = []
        for name in self.list_commands(ctx):
            lazy = self.lazy_commands.get(name)
            if lazy is not None:
                # shortened as click shortens a loaded command's help
                rows.append((name, click.Command(name, help=lazy.short_help).get_short_help_str(limit)))
                continue
            command = super().get_command(ctx, name)
            if command is not None and not command.hidden:
                rows.append((name, command.get_short_help_str(limit)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    # SIGTERM/SIGHUP become KeyboardInterrupt so every ExitStack unwinds (VMs stopped, temp dirs gone).
    raise KeyboardInterrupt


def setup_logging(verbose: bool) -> None:
    import logging

    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(name)s: %(message)s",
        stream=sys.stderr,
    )


def _print_error(line: str) -> None:
    from .common import err_console  # rich, only when there is something to print

    err_console.print(line, markup=False, soft_wrap=True)


def run_cli(command: click.Command, prog: str, args: list[str] | None = None) -> NoReturn:
    """Run a click command; expected failures print one line and exit with their own code."""
    # A shell's background job inherits SIGINT as ignored; we still want Ctrl-C/SIGINT to unwind
    # (stopping VMs) rather than be dropped silently.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGHUP, _raise_interrupt)
    try:
        rv = command.main(args=args, prog_name=prog, standalone_mode=False)
    except VzLinuxError as e:
        _print_error(f"{prog}: error: {e.one_line()}")
        sys.exit(e.exit_code)
    except click.exceptions.Abort:
        _print_error(f"{prog}: interrupted")
        sys.exit(EXIT_INTERRUPTED)
    except KeyboardInterrupt:
        _print_error(f"{prog}: interrupted")
        sys.exit(EXIT_INTERRUPTED)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.ClickException as e:
        e.show()
        sys.exit(EXIT_USAGE if isinstance(e, click.UsageError) else e.exit_code)
    sys.exit(rv if isinstance(rv, int) else 0)
