"""What the commands share for output: the rich consoles, listings, download progress and warnings.

The start-up part (the error handler ``run_cli``, ``setup_logging``) is in :mod:`.entry`, which
does not import rich. Nor does this module until something is printed: importing rich costs about
as much as the rest of a ``vz oci run`` start-up (docs/architecture.md, "Start-up"), so the
consoles are made on first use and commands reach them as ``common.out_console`` at call time.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager

TYPE_CHECKING = False  # typing costs milliseconds at start-up; mypy treats it as true
if TYPE_CHECKING:
    from typing import Any

    from rich.console import Console
    from rich.progress import TaskID

    err_console: Console
    out_console: Console


def _console(name: str) -> Console:
    if name not in globals():
        from rich.console import Console

        # Not a terminal (CI logs, pipes): rich would wrap tables at 80 columns; logs are read wide.
        width = None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 160
        globals().update(err_console=Console(stderr=True, highlight=False, width=width),
                         out_console=Console(highlight=False, width=width))
    console: Console = globals()[name]
    return console


def __getattr__(name: str) -> Any:
    if name not in ("err_console", "out_console"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return _console(name)


def print_listing(columns: Sequence[str], rows: Iterable[Sequence[str]]) -> None:
    """A borderless table on stdout, one row per item (``ps``, ``images``, ``vm ls``, ``stats``)."""
    from rich.table import Table

    table = Table(box=None, pad_edge=False)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*row)
    _console("out_console").print(table)


@contextmanager
def download_progress() -> Iterator[Callable[[str, int, int | None], None]]:
    """A progress callback ``(name, bytes done, total or None)``: a bar per file on a terminal,
    nothing in logs (no live display there)."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    progress = Progress(TextColumn("{task.description}", markup=False), BarColumn(), DownloadColumn(),
                        TransferSpeedColumn(), console=_console("err_console"), transient=True)
    tasks: dict[str, TaskID] = {}

    def update(name: str, done: int, total: int | None) -> None:
        if not progress.console.is_terminal:
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
    _console("err_console").print(f"{prog}: warning: {message}", markup=False, soft_wrap=True)
