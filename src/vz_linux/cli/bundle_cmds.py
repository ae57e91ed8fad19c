"""Commands of this stage, registered on the `vz-linux` group (placeholder until implemented)."""

from __future__ import annotations

from .main import cli  # noqa: F401
