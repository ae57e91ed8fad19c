"""Command-line shims over the :mod:`vz_linux` library. No logic lives here beyond parsing."""
