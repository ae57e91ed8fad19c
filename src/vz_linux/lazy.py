"""Package attributes that import their module on first use (PEP 562), so importing a package
costs nothing until one of its names is read (docs/architecture.md, "Start-up")."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable

# typing costs milliseconds at start-up; mypy treats any TYPE_CHECKING as true.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def lazy_exports(package: str, exports: dict[str, str], eager: tuple[str, ...] = ()
                 ) -> tuple[Callable[[str], Any], Callable[[], list[str]], list[str]]:
    """``(__getattr__, __dir__, __all__)`` for ``package``: ``exports`` maps a public name to the
    module (relative to ``package``) that defines it; ``eager`` names are already in the package."""
    names = sorted([*exports, *eager])

    def getattr_(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module, package), name)
        setattr(sys.modules[package], name, value)  # later lookups are plain attribute reads
        return value

    def dir_() -> list[str]:
        return names

    return getattr_, dir_, names
