"""Fetching a release's files from an http(s) URL or a local directory (docs/distribution.md,
"Installing a release").

* Small files (``SHA256SUMS``, signatures) are read into memory, capped at :data:`SMALL_LIMIT`.
* Assets are fetched by the sha256 the signed ``SHA256SUMS`` gives them: over HTTP into
  ``<cache>/downloads/<sha256>.part``, resumed with a ``Range`` request when a previous attempt
  was cut short, capped at ``max_bytes``, hashed as they arrive, and handed over only when the
  whole file has exactly that sha256 (else it is deleted: :class:`AssetChecksumError`). A local
  directory is read in place, hashed the same way.

Progress is reported through a callback (``name, bytes done, bytes total or None``); drawing it is
the CLI's job.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import shutil
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import filelock

from .. import layout
from ..errors import AssetChecksumError, DownloadError, InvalidConfigError, ReleaseAssetMissingError
from ..hashing import sha256_file
from ..version import __version__

Progress = Callable[[str, int, int | None], None]
SMALL_LIMIT = 1 << 20
DEFAULT_MAX_BYTES = 1 << 30
_CHUNK = 1 << 16
_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class ReleaseSource:
    """Where a release's files are: ``http(s)://…/`` or a directory (a path or ``file://``)."""

    url: str | None
    directory: Path | None

    @classmethod
    def parse(cls, text: str) -> ReleaseSource:
        parsed = urllib.parse.urlparse(text)
        if parsed.scheme in ("http", "https"):
            return cls(text.rstrip("/") + "/", None)
        if parsed.scheme == "file":
            return cls(None, Path(urllib.parse.unquote(parsed.path)))
        if parsed.scheme and len(parsed.scheme) > 1:
            raise InvalidConfigError(f"cannot fetch a release from {text!r}: only http(s):// URLs and "
                                     "directories are supported", hint="pass --from URL or --from DIR")
        return cls(None, Path(text))

    def where(self, name: str) -> str:
        if self.url is not None:
            return urllib.parse.urljoin(self.url, urllib.parse.quote(name))
        assert self.directory is not None
        return str(self.directory / name)


@dataclass(frozen=True)
class Fetcher:
    source: ReleaseSource
    max_bytes: int = DEFAULT_MAX_BYTES
    progress: Progress | None = None
    downloads: Path | None = None  # None: layout.downloads_dir()

    def _report(self, name: str, done: int, total: int | None) -> None:
        if self.progress is not None:
            self.progress(name, done, total)

    # --- small files ------------------------------------------------------------------------------
    def read_small(self, name: str, limit: int = SMALL_LIMIT) -> bytes:
        """A small file of the release, whole (missing → :class:`ReleaseAssetMissingError`)."""
        with self._open(name, 0) as (stream, total, _):
            if total is not None and total > limit:
                raise DownloadError(f"{self.source.where(name)} is {total} bytes, more than the {limit} allowed")
            try:
                data = stream.read(limit + 1)
            except (http.client.IncompleteRead, OSError) as e:
                raise self._truncated(name, 0, total, e) from None
        if len(data) > limit:
            raise DownloadError(f"{self.source.where(name)} is larger than the {limit} bytes allowed")
        return data

    # --- assets -----------------------------------------------------------------------------------
    def fetch(self, name: str, sha256: str, dest: Path) -> None:
        """Put release file ``name`` at ``dest`` if and only if its sha256 is ``sha256``."""
        if self.source.directory is not None:
            self._copy_local(name, sha256, dest)
            return
        parts = self.downloads or layout.downloads_dir()
        parts.mkdir(parents=True, exist_ok=True)
        part = parts / f"{sha256}.part"
        with filelock.FileLock(str(part) + ".lock", timeout=600):
            self._download(name, part)
            actual = sha256_file(part)
            if actual != sha256:
                part.unlink(missing_ok=True)
                raise AssetChecksumError(
                    f"{name}: downloaded sha256 {actual} differs from {sha256} in the signed SHA256SUMS",
                    hint="the file was altered on the server or in transit; nothing was installed")
            shutil.move(part, dest)

    def _copy_local(self, name: str, sha256: str, dest: Path) -> None:
        h = hashlib.sha256()
        with self._open(name, 0) as (stream, total, _), open(dest, "xb") as out:
            if total is not None and total > self.max_bytes:
                raise self._too_big(name, total)
            done = 0
            while chunk := stream.read(_CHUNK):
                h.update(chunk)
                out.write(chunk)
                done += len(chunk)
                self._report(name, done, total)
        if h.hexdigest() != sha256:
            dest.unlink()
            raise AssetChecksumError(f"{name}: sha256 {h.hexdigest()} differs from {sha256} in the signed SHA256SUMS",
                                     hint="the file was altered; nothing was installed")

    def _download(self, name: str, part: Path) -> None:
        have = part.stat().st_size if part.exists() else 0
        try:
            with self._open(name, have) as (stream, total, resumed):
                self._receive(name, part, stream, have if resumed else 0, total)
        except _RangeNotSatisfiable:
            part.unlink()  # longer than the file now on the server: a stale part, start over
            self._download(name, part)

    def _receive(self, name: str, part: Path, stream: IO[bytes], have: int, total: int | None) -> None:
        """Append ``stream`` to ``part`` (restarted when ``have`` is 0), within the size cap."""
        full = None if total is None else have + total
        done = have
        if full is None or full <= self.max_bytes:
            with open(part, "ab" if have else "wb") as out:
                try:
                    while (chunk := stream.read(_CHUNK)) and done + len(chunk) <= self.max_bytes:
                        done += len(chunk)
                        out.write(chunk)
                        self._report(name, done, full)
                except (http.client.IncompleteRead, OSError) as e:
                    raise self._truncated(name, done, full, e) from None
            if not chunk:
                if full is not None and done < full:
                    raise self._truncated(name, done, full, None)
                return
        part.unlink(missing_ok=True)
        raise self._too_big(name, full)

    def _too_big(self, name: str, size: int | None) -> DownloadError:
        what = f"is {size} bytes" if size is not None else "is larger"
        return DownloadError(f"{self.source.where(name)} {what}, over the {self.max_bytes} byte cap",
                             hint="raise --max-size if this release is really that large")

    def _truncated(self, name: str, done: int, full: int | None, e: Exception | None) -> DownloadError:
        of = f" of {full}" if full is not None else ""
        why = f" ({type(e).__name__})" if e is not None else ""
        return DownloadError(f"download of {self.source.where(name)} was cut short after {done}{of} bytes{why}",
                             hint="run the same command again: it resumes where it stopped")

    # --- opening ----------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _open(self, name: str, offset: int) -> Iterator[tuple[IO[bytes], int | None, bool]]:
        """(stream, bytes it will deliver or None, whether it starts at ``offset``)."""
        if self.source.directory is not None:
            path = self.source.directory / name
            try:
                f = open(path, "rb")  # noqa: SIM115 (closed by the with below; the except needs it first)
            except FileNotFoundError:
                raise ReleaseAssetMissingError(f"{path} does not exist",
                                               hint="check --from and --version") from None
            except OSError as e:
                raise DownloadError(f"cannot read {path}: {e.strerror}") from None
            with f:
                yield f, os.fstat(f.fileno()).st_size, False
            return
        with self._http(name, offset) as got:
            yield got

    @contextlib.contextmanager
    def _http(self, name: str, offset: int) -> Iterator[tuple[IO[bytes], int | None, bool]]:
        url = self.source.where(name)
        headers = {"User-Agent": f"vz-linux/{__version__}"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        try:
            resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=_TIMEOUT_S)
        except urllib.error.HTTPError as e:
            if e.code == 404:
                raise ReleaseAssetMissingError(f"{url} does not exist (HTTP 404)",
                                               hint="check --from and --version") from None
            if e.code == 416 and offset:
                raise _RangeNotSatisfiable from None
            raise DownloadError(f"{url}: HTTP {e.code} {e.reason}") from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise DownloadError(f"cannot fetch {url}: {reason}", hint="check the URL and the network") from None
        with resp:
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            resumed = offset > 0 and resp.status == 206 and _range_start(resp.headers.get("Content-Range")) == offset
            yield resp, total, resumed


class _RangeNotSatisfiable(Exception):
    """HTTP 416 to a resume: the part file is not a prefix of what the server has."""


def _range_start(content_range: str | None) -> int | None:
    # "bytes 100-199/200"
    if not content_range or not content_range.startswith("bytes "):
        return None
    start = content_range[6:].split("-", 1)[0]
    return int(start) if start.isdigit() else None

