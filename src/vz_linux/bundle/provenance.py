"""The release's provenance: an in-toto Statement with an SLSA provenance v1 predicate
(docs/distribution.md, "Provenance").

Subjects are the release's tarballs (name + sha256). The predicate records, per bundle, what its
``version.json`` says it was built from — the kernel source and its sha256, the resolved kernel
config's sha256 and cache key, the toolchain, the crun source package and the BusyBox package —
plus the config fragments (read from the checkout at release time; the resolved config's sha256
is what the build really used). Nothing in it depends on the clock or the machine, so two releases
of the same bundles write the same bytes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ..arch import Architecture
from ..hashing import sha256_file
from ..profiles import KernelProfile
from ..version import AGENT_PROTOCOL_REVISION, AGENT_VERSION, __version__
from .metadata import BundleMetadata

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://slsa.dev/provenance/v1"
BUILD_TYPE = "https://vz-linux.invalid/buildtypes/bundle-release/v1"

Fragments = Mapping[tuple[KernelProfile, Architecture], Sequence[Path]]
_DEBIAN = re.compile(r"\(Debian ([^ )]+)")


def _purl(package: str, version: str, arch: str) -> str:
    return f"pkg:deb/debian/{package}@{quote(version, safe='+.~-')}?arch={arch}"


def _debian_version(recorded: str) -> str | None:
    """The Debian package version inside a recorded ``"1.35.0 (Debian 1:1.35.0-4+b1)"``."""
    m = _DEBIAN.search(recorded)
    return m.group(1) if m else None


def _kernel_source(m: BundleMetadata) -> dict[str, Any]:
    src = m.kernel_source
    if src is None:  # seed-format metadata: only the version is known
        return {"name": f"linux-{m.kernel}", "annotations": {"kind": "unknown"}}
    out: dict[str, Any] = {"name": src.origin, "annotations": {"kind": src.kind, "version": src.version}}
    if src.sha256:
        out["digest"] = {"sha256": src.sha256}
    if src.kind == "debian-package" and "=" in src.origin:
        package, version = src.origin.split("=", 1)
        out["uri"] = _purl(package, version, "all")
    elif src.kind == "tarball" and "://" in src.origin:
        out["uri"] = src.origin
    return out


def _userland(m: BundleMetadata) -> list[dict[str, Any]]:
    deps: list[dict[str, Any]] = []
    crun_deb = _debian_version(m.oci_runtime.version)
    crun: dict[str, Any] = {"name": m.oci_runtime.name, "annotations": {"version": m.oci_runtime.version,
                                                                     "binary_sha256": m.oci_runtime.sha256}}
    if crun_deb:
        crun["uri"] = _purl(m.oci_runtime.name, crun_deb, "source")
    busybox_deb = _debian_version(m.busybox)
    busybox: dict[str, Any] = {"name": "busybox-static", "annotations": {"version": m.busybox}}
    if busybox_deb:
        busybox["uri"] = _purl("busybox-static", busybox_deb, m.arch.debian_arch)
    deps += [crun, busybox]
    return deps


def _dependencies(m: BundleMetadata, fragments: Sequence[Path], checkout: Path | None) -> list[dict[str, Any]]:
    key = f"{m.profile.value}/{m.arch.value}"
    deps = [_kernel_source(m)]
    if m.kernel_config_sha256:
        deps.append({"name": "kernel .config (resolved)", "digest": {"sha256": m.kernel_config_sha256},
                     "annotations": {"kernel_cache_key": m.kernel_cache_key or ""}})
    for path in fragments:
        name = str(path.relative_to(checkout)) if checkout and path.is_relative_to(checkout) else path.name
        deps.append({"name": name, "digest": {"sha256": sha256_file(path)},
                     "annotations": {"recorded": "at release time, from the checkout"}})
    deps += _userland(m)
    for d in deps:
        d.setdefault("annotations", {})["bundle"] = key
    return deps


def statement(version: str, bundles: Sequence[BundleMetadata], subjects: Mapping[str, str],
              fragments: Fragments, checkout: Path | None = None) -> dict[str, Any]:
    """The in-toto statement for a release of ``bundles`` whose assets are ``subjects`` (name → sha256)."""
    deps: list[dict[str, Any]] = []
    internal: dict[str, Any] = {}
    for m in bundles:
        deps += _dependencies(m, fragments.get((m.profile, m.arch), ()), checkout)
        internal[f"{m.profile.value}/{m.arch.value}"] = {
            "toolchain": m.toolchain.model_dump(mode="json") if m.toolchain else None,
            "kernel_release": m.kernel_release or m.kernel,
            "built": m.built,
        }
    built = sorted(m.built for m in bundles)
    return {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": name, "digest": {"sha256": sha}} for name, sha in sorted(subjects.items())],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": {
                    "version": version,
                    "bundles": [{"profile": m.profile.value, "arch": m.arch.value} for m in bundles],
                },
                "internalParameters": internal,
                "resolvedDependencies": deps,
            },
            "runDetails": {
                "builder": {"id": f"pkg:pypi/vz-linux@{__version__}",
                            "version": {"vz-linux": __version__, "guest-agent": AGENT_VERSION,
                                        "agent-protocol": str(AGENT_PROTOCOL_REVISION)}},
                "metadata": {"startedOn": built[0], "finishedOn": built[-1]} if built else {},
            },
        },
    }


def to_bytes(doc: Mapping[str, Any]) -> bytes:
    """Canonical text: sorted keys, two-space indent, trailing newline (byte-stable across runs)."""
    return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()
