"""Fixtures of the kernel-build tests: the real kernel source from the cache (extracted once)."""

from __future__ import annotations

import pytest

from vz_linux.build.sources import KernelSource, SourceSpec, acquire_source


@pytest.fixture(scope="session")
def kernel_source() -> KernelSource:
    """Debian's linux-source, extracted into the cache once per machine (~1 min the first time)."""
    return acquire_source(SourceSpec())
