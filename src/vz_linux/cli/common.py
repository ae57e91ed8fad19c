"""What the commands share for output: the rich consoles, download progress and warnings.

The start-up part (the error handler ``run_cli``, ``setup_logging``) is in :mod:`.entry`, which
does not import rich."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TaskID, TextColumn, TransferSpeedColumn

# Not a terminal (CI logs, pipes): rich would wrap tables at 80 columns; logs are read wide.
_WIDTH = None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 160
err_console = Console(stderr=True, highlight=False, width=_WIDTH)
out_console = Console(highlight=False, width=_WIDTH)


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
