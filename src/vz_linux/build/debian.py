"""apt and dpkg: the one place the build asks Debian's tools about packages or fetches them.

Used by ``sources`` (the installed ``linux-source`` package), ``busybox`` (``busybox-static`` of
another arch) and ``crun`` (its source package and a sysroot of another arch's libraries).
Nothing here installs anything: packages of another arch are fetched with ``apt-get download``
and unpacked with ``dpkg-deb -x``; source packages with ``apt-get source --download-only`` and
``dpkg-source -x``. Downloads go to a scratch directory beside the destination (same
filesystem as the cache), removed afterwards.

The functions return facts; the callers decide which error a missing package is.
"""

from __future__ import annotations

import contextlib
import re
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

from ..arch import Architecture
from ..errors import BuildError
from ..hashing import sha256_file
from ..run import run

_INSTALLED = "install ok installed"


def _qualified(packages: Iterable[str], arch: Architecture | None) -> list[str]:
    """``pkg:<debian arch>`` (an ``Architecture: all`` package takes ``arch=None``: no qualifier)."""
    return [p if arch is None else f"{p}:{arch.debian_arch}" for p in packages]


def installed_versions(packages: Iterable[str], arch: Architecture | None = None) -> dict[str, str]:
    """Package -> version of those of ``packages`` that are installed (``dpkg-query``); the
    others are absent from the result."""
    names = _qualified(packages, arch)
    # dpkg-query exits 1 when a name matches nothing, and still prints the others.
    proc = run(["dpkg-query", "-W", "-f", "${Package}\t${Status}\t${Version}\n", *names], check=False)
    versions: dict[str, str] = {}
    for line in proc.stdout.decode().splitlines():
        package, status, version = line.split("\t")
        if _INSTALLED in status and version:
            versions[package] = version
    return versions


def candidate_versions(packages: Iterable[str], arch: Architecture | None = None) -> dict[str, str]:
    """Package -> the version apt would fetch (``apt-cache show --no-all-versions``); packages
    apt does not know are absent from the result."""
    argv = ["apt-cache", "show", "--no-all-versions", *_qualified(packages, arch)]
    out = run(argv, check=False).stdout.decode()
    versions: dict[str, str] = {}
    for paragraph in out.split("\n\n"):
        package = re.search(r"^Package: (\S+)$", paragraph, re.M)
        version = re.search(r"^Version: (\S+)$", paragraph, re.M)
        if package and version:
            versions.setdefault(package[1], version[1])
    return versions


@contextlib.contextmanager
def _scratch(beside: Path) -> Iterator[Path]:
    """An empty directory for apt's downloads next to ``beside``, removed afterwards."""
    beside.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=beside.parent, prefix=f".{beside.name}.apt-") as tmp:
        yield Path(tmp)


def _deb_identity(deb: Path) -> tuple[str, str]:
    """(Package, Version) from a ``.deb``'s control file."""
    out = run(["dpkg-deb", "--field", str(deb), "Package", "Version"]).stdout.decode()
    fields = dict(re.findall(r"^(Package|Version): (\S+)$", out, re.M))
    return fields.get("Package", ""), fields.get("Version", "")


def unpack_binaries(packages: Mapping[str, str], arch: Architecture, tree: Path) -> None:
    """Fetch these exact package versions of ``arch`` and unpack them all into ``tree``."""
    with _scratch(tree) as debs:
        run(["apt-get", "download", *(f"{p}:{arch.debian_arch}={v}" for p, v in sorted(packages.items()))],
            cwd=debs)
        files = sorted(debs.glob("*.deb"))
        got = dict(_deb_identity(deb) for deb in files)
        if len(files) != len(packages) or got != dict(packages):
            raise BuildError(f"apt-get download of {', '.join(sorted(packages))} for {arch.debian_arch} gave "
                             f"{', '.join(f'{p} {v}' for p, v in sorted(got.items())) or 'no .deb files'}; "
                             f"expected {', '.join(f'{p} {v}' for p, v in sorted(packages.items()))}")
        for deb in files:
            run(["dpkg-deb", "-x", str(deb), str(tree)])


def unpack_source(package: str, version: str, tree: Path) -> str:
    """Fetch the source package ``package=version`` and unpack it with Debian's patches into
    ``tree`` (which must not exist); returns the sha256 of its ``.dsc``.

    ``dpkg-source`` checks every file against the ``.dsc``'s checksums, so that one hash covers
    the upstream tarball and Debian's patches.
    """
    with _scratch(tree) as work:
        run(["apt-get", "source", "--download-only", f"{package}={version}"], cwd=work)
        dscs = sorted(work.glob("*.dsc"))
        if len(dscs) != 1:
            raise BuildError(f"apt-get source {package}={version} gave {len(dscs)} .dsc files")
        run(["dpkg-source", "--no-copy", "-x", str(dscs[0]), str(tree)])
        got = run(["dpkg-parsechangelog", "-l", str(tree / "debian" / "changelog"),
                   "-S", "Version"]).stdout.decode().strip()
        if got != version:
            raise BuildError(f"{package} source is {got}, expected the pinned {version}")
        return sha256_file(dscs[0])
