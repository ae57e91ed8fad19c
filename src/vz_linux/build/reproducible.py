"""The build epoch and the reproducible-build environment of the kernel (docs/profiles.md,
"Reproducible kernels").

One owner for "what time is it, as far as a build is concerned": :func:`build_epoch` is
``SOURCE_DATE_EPOCH`` when the caller sets it, else the pinned kernel package's changelog date
(``KERNEL_SOURCE_DATE_EPOCH`` in ``linux/kernel-version*.mk``), never the wall clock.
:func:`kbuild_env` is what the kernel's make gets so that neither the time, the user, the host
nor the source and build paths end up in the image; :func:`kbuild_identity` is the part of it
that goes into the kernel cache key (paths excluded: they must not change the bytes).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

from ..errors import InvalidConfigError
from .sources import KernelPin, select_pin

BUILD_USER = "vz-linux"
BUILD_HOST = "vz-linux"
BUILD_VERSION = "1"  # the "#1" of `uname -v`; kbuild would count builds in <builddir>/.version


def build_epoch(pin: KernelPin | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Seconds since 1970: ``SOURCE_DATE_EPOCH`` if set, else the pin's source date."""
    env = os.environ if environ is None else environ
    raw = env.get("SOURCE_DATE_EPOCH")
    if raw is not None and raw != "":
        if not re.fullmatch(r"[0-9]{1,12}", raw):
            raise InvalidConfigError(f"SOURCE_DATE_EPOCH={raw!r} is not a non-negative integer",
                                     hint="unset it, or give seconds since 1970")
        return int(raw)
    return (pin or select_pin()).source_date_epoch


def build_timestamp(epoch: int) -> str:
    """``KBUILD_BUILD_TIMESTAMP`` for ``epoch``: the `date -u` spelling, which the kernel's
    usr/gen_initramfs.sh parses back with `date -d` for the built-in initramfs's mtimes."""
    return datetime.fromtimestamp(epoch, UTC).strftime("%a %b %d %H:%M:%S UTC %Y")


def kbuild_identity(epoch: int) -> dict[str, str]:
    """The path-free part of :func:`kbuild_env`: it changes the image, so it is in the cache key."""
    return {
        "SOURCE_DATE_EPOCH": str(epoch),
        "KBUILD_BUILD_TIMESTAMP": build_timestamp(epoch),
        "KBUILD_BUILD_USER": BUILD_USER,
        "KBUILD_BUILD_HOST": BUILD_HOST,
        "KBUILD_BUILD_VERSION": BUILD_VERSION,
    }


def kbuild_env(source_tree: Path, builddir: Path, epoch: int, cflags: tuple[str, ...] = ()) -> dict[str, str]:
    """Environment additions for the kernel's make: fixed time/user/host, and the source and build
    directories mapped to ``.`` in everything the compiler records (``-ffile-prefix-map``), then
    ``cflags`` (:func:`kbuild.arch_cflags`)."""
    maps = [f"-ffile-prefix-map={d}=." for d in (str(source_tree.resolve()), str(builddir.resolve()))]
    return {**kbuild_identity(epoch), "KCFLAGS": " ".join([*maps, *cflags]), "TZ": "UTC", "LC_ALL": "C"}
