"""What every console script shares: logging setup, signal handling, and the one error handler."""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import NoReturn

import click
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TaskID, TextColumn, TransferSpeedColumn

from ..errors import VzLinuxError

# Not a terminal (CI logs, pipes): rich would wrap tables at 80 columns; logs are read wide.
_WIDTH = None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 160
err_console = Console(stderr=True, highlight=False, width=_WIDTH)
out_console = Console(highlight=False, width=_WIDTH)

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    # SIGTERM/SIGHUP become KeyboardInterrupt so every ExitStack unwinds (VMs stopped, temp dirs gone).
    raise KeyboardInterrupt


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(name)s: %(message)s",
        stream=sys.stderr,
    )


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
        err_console.print(f"{prog}: error: {e.one_line()}", markup=False, soft_wrap=True)
        sys.exit(e.exit_code)
    except click.exceptions.Abort:
        err_console.print(f"{prog}: interrupted", markup=False)
        sys.exit(EXIT_INTERRUPTED)
    except KeyboardInterrupt:
        err_console.print(f"{prog}: interrupted", markup=False)
        sys.exit(EXIT_INTERRUPTED)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.ClickException as e:
        e.show()
        sys.exit(EXIT_USAGE if isinstance(e, click.UsageError) else e.exit_code)
    sys.exit(rv if isinstance(rv, int) else 0)


@contextmanager
def download_progress() -> Iterator[Callable[[str, int, int | None], None]]:
    """A progress callback ``(name, bytes done, total or None)``: a bar per file on a terminal,
    nothing in logs (no live display there)."""
    progress = Progress(TextColumn("{task.description}", markup=False), BarColumn(), DownloadColumn(),
                        TransferSpeedColumn(), console=err_console, transient=True)
    tasks: dict[str, TaskID] = {}

    def update(name: str, done: int, total: int | None) -> None:
        if not err_console.is_terminal:
            return
        if not progress.live.is_started:
            progress.start()
        if name not in tasks:
            tasks[name] = progress.add_task(name, total=total)
        progress.update(tasks[name], completed=done, total=total)

    try:
        yield update
    finally:
        if progress.live.is_started:
            progress.stop()


def warn(prog: str, message: str) -> None:
    err_console.print(f"{prog}: warning: {message}", markup=False, soft_wrap=True)
