"""UTC timestamps: the one format for every recorded time (metadata, state, descriptors)."""

from __future__ import annotations

from datetime import UTC, datetime


def utc_timestamp(when: datetime | None = None, *, timespec: str = "seconds") -> str:
    """``when`` (default: now) as ISO 8601 in UTC with a ``Z`` suffix, e.g. ``2026-12-04T16:19:21Z``."""
    moment = (when or datetime.now(UTC)).astimezone(UTC)
    return moment.isoformat(timespec=timespec).replace("+00:00", "Z")
