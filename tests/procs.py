"""Live (not zombie) processes on this machine whose command line mentions given text: what a test
checks to prove nothing (QEMU, virtiofsd, a supervisor) outlived it."""

from __future__ import annotations

import os
from pathlib import Path


def live_processes_mentioning(*texts: str) -> list[str]:
    """Command lines (NULs as spaces) of live processes whose command line contains every text."""
    alive = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if all(t in cmdline for t in texts) and state != "Z":
            alive.append(cmdline)
    return alive
