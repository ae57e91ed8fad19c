"""The build epoch (placeholder for the k612 helper's module of the same name, which owns it and
adds the kernel's reproducible-build environment; on merge theirs replaces this file).

:func:`build_epoch` is ``SOURCE_DATE_EPOCH`` when the caller sets it, else a fixed date — never
the wall clock.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

from ..errors import InvalidConfigError
from .cpio import DEFAULT_EPOCH


def build_epoch(pin: object = None, environ: Mapping[str, str] | None = None) -> int:
    """Seconds since 1970: ``SOURCE_DATE_EPOCH`` if set, else a fixed date."""
    env = os.environ if environ is None else environ
    raw = env.get("SOURCE_DATE_EPOCH")
    if raw is not None and raw != "":
        if not re.fullmatch(r"[0-9]{1,12}", raw):
            raise InvalidConfigError(f"SOURCE_DATE_EPOCH={raw!r} is not a non-negative integer",
                                     hint="unset it, or give seconds since 1970")
        return int(raw)
    return DEFAULT_EPOCH
