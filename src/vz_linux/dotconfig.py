"""Reading kernel ``.config`` text and config fragments (one parser for both)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

_SET = re.compile(r"^CONFIG_([A-Za-z0-9_]+)=(.*)$")
_UNSET = re.compile(r"^# CONFIG_([A-Za-z0-9_]+) is not set\s*$")


@dataclass(frozen=True)
class ConfigLine:
    """One assignment in a fragment or .config: ``symbol`` without the CONFIG_ prefix.

    ``value`` is as written (``y``, ``m``, ``n``, ``"string"``, ``123``, ``0x10``); "is not set" is ``n``.
    """

    symbol: str
    value: str
    path: Path | None = None
    lineno: int = 0

    def as_text(self) -> str:
        return f"# CONFIG_{self.symbol} is not set" if self.value == "n" else f"CONFIG_{self.symbol}={self.value}"


def parse_lines(text: str, path: Path | None = None) -> list[ConfigLine]:
    out: list[ConfigLine] = []
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if m := _SET.match(line):
            out.append(ConfigLine(m[1], m[2], path, n))
        elif m := _UNSET.match(line):
            out.append(ConfigLine(m[1], "n", path, n))
    return out


def parse_dotconfig(text: str) -> dict[str, str]:
    """Symbol -> value; symbols absent from the text are simply missing (treat as ``n``)."""
    return {c.symbol: c.value for c in parse_lines(text)}


def value(config: dict[str, str], symbol: str) -> str:
    return config.get(symbol, "n")


def is_enabled(config: dict[str, str], symbol: str) -> bool:
    return value(config, symbol) in ("y", "m")
