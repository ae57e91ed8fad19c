"""Process-table helpers for the lifetime tests (read /proc directly: no extra dependency)."""

from __future__ import annotations

import os
from pathlib import Path


def cmdline(pid: int) -> str | None:
    """The process's command line, or None if it is gone (zombies count as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return None
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, IndexError):
        return None
    return raw.replace(b"\0", b" ").decode(errors="replace").strip() or None


def alive(pid: int) -> bool:
    return cmdline(pid) is not None


def environ(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes().replace(b"\0", b"\n").decode(errors="replace")
    except OSError:
        return ""


def processes_mentioning(needle: str) -> list[tuple[int, str]]:
    """Live QEMU/virtiofsd processes whose command line or environment (TMPDIR) contains ``needle``."""
    out = []
    me = os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        cl = cmdline(int(entry.name))
        if cl and ("qemu-system" in cl or "virtiofsd" in cl) and (needle in cl or needle in environ(int(entry.name))):
            out.append((int(entry.name), cl))
    return out
