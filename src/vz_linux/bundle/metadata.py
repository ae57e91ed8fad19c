"""The ``version.json`` model (docs/selection.md): reading, writing, the seed's format, the JSON Schema.

One pydantic model is the single declaration: validation of untrusted files, the constructor the
build uses, the serialisation and the published schema (``schemas/version.schema.json``, regenerated
with ``scripts/gen-version-schema``; a test fails on drift).

Seed-format files (``youki`` / ``sha256_youki``, no ``schema_version``) still read: they are
migrated on load to ``schema_version`` 1 with ``oci_runtime`` = youki and ``arch`` = arm64 (the
seed built arm64 bundles only).
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
    model_validator,
)

from .. import layout
from ..arch import Architecture
from ..errors import InvalidMetadataError
from ..fsutil import write_atomic
from ..hashing import sha256_file
from ..profiles import KernelCapability, KernelProfile
from ..version import METADATA_SCHEMA_VERSION

Sha256 = Annotated[StrictStr, Field(pattern=r"^[0-9a-f]{64}$", description="lowercase hex sha256")]
# A bundle file name recorded in metadata: a plain name inside the bundle dir, never a path, so a
# hostile version.json cannot point validation or installs outside the bundle.
def _plain_file_name(name: str) -> str:
    if name in (".", ".."):
        raise ValueError(f"{name!r} is not a file name")
    return name


FileName = Annotated[StrictStr, Field(pattern=r"^[A-Za-z0-9._+-]+$"), AfterValidator(_plain_file_name)]

# Fields a schema_version >= 2 file must have; seed-format (schema 1) files lack them.
_NEW_FORMAT_FIELDS = ("files", "kernel_config_sha256", "kernel_cache_key", "kernel_source", "toolchain")
SEED_SCHEMA_VERSION = 1
SEED_ARCH = Architecture.arm64


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class FileInfo(_Model):
    sha256: Sha256
    size: Annotated[StrictInt, Field(ge=0)]

    @classmethod
    def of(cls, path: Path) -> FileInfo:
        """Hash and size of a file on disk (what the build records for every artifact)."""
        return cls(sha256=sha256_file(path), size=path.stat().st_size)


class OciRuntimeInfo(_Model):
    name: FileName  # also the file's name inside the bundle (``crun``; seed bundles: ``youki``)
    version: StrictStr
    sha256: Sha256


class KernelSourceInfo(_Model):
    kind: Literal["debian-package", "tarball", "tree"]
    version: StrictStr  # exact version, e.g. Debian's "6.1.158-1"
    sha256: StrictStr | None = None  # of the package/tarball; None for an existing tree
    origin: StrictStr  # package name, path or URL the source came from


class ToolchainInfo(_Model):
    compiler: StrictStr  # first line of `$(CC) --version`
    binutils: StrictStr  # first line of `$(LD) --version`
    cross_compile: StrictStr  # CROSS_COMPILE= prefix ("" when native)


class BundleMetadata(BaseModel):
    """Contents of a bundle's ``version.json``.

    Unknown top-level fields are kept (``extra="allow"``) so a newer writer's additions survive a
    read/write round trip; unknown capability names (a newer release's, e.g. ``gpu_passthrough``) are
    kept in ``capabilities`` but ignored by :attr:`capability_set`.
    """

    model_config = ConfigDict(frozen=True, extra="allow")

    schema_version: Annotated[StrictInt, Field(ge=1)]
    kernel: StrictStr
    kernel_release: StrictStr | None = None
    profile: KernelProfile
    security_profile: StrictStr
    arch: Architecture
    busybox: StrictStr
    agent: StrictStr
    # None = the file lacks it (seed files may): reported as its own error, not as a mismatch.
    agent_protocol_revision: StrictInt | None = None
    built: StrictStr
    sha256_vmlinux: Sha256
    sha256_initramfs: Sha256
    oci_runtime: OciRuntimeInfo
    capabilities: list[StrictStr]
    files: dict[FileName, FileInfo] | None = None
    kernel_config_sha256: Sha256 | None = None
    kernel_cache_key: StrictStr | None = None
    kernel_source: KernelSourceInfo | None = None
    toolchain: ToolchainInfo | None = None

    # --- validation -----------------------------------------------------------------------------
    @model_validator(mode="before")
    @classmethod
    def _migrate_seed(cls, data: Any) -> Any:
        if not isinstance(data, dict) or ("youki" not in data and "sha256_youki" not in data):
            return data
        data = dict(data)
        youki_version = data.pop("youki", None)
        youki_sha = data.pop("sha256_youki", None)
        data.setdefault("schema_version", SEED_SCHEMA_VERSION)
        data.setdefault("arch", SEED_ARCH.value)
        data.setdefault("oci_runtime", {"name": "youki", "version": youki_version, "sha256": youki_sha})
        return data

    @field_validator("capabilities", mode="before")
    @classmethod
    def _plain_names(cls, v: Any) -> Any:
        # KernelCapability members are str subclasses; store their plain values.
        if isinstance(v, list | tuple | set | frozenset):
            return [str(x) if isinstance(x, KernelCapability) else x for x in v]
        return v

    @field_validator("capabilities")
    @classmethod
    def _sorted(cls, v: list[str]) -> list[str]:
        return sorted(set(v))

    @field_validator("built")
    @classmethod
    def _iso8601(cls, v: str) -> str:
        try:
            datetime.fromisoformat(v)
        except ValueError:
            raise ValueError(f"not an ISO-8601 timestamp: {v!r}") from None
        return v

    @model_validator(mode="after")
    def _consistent(self) -> BundleMetadata:
        if self.schema_version >= 2:
            missing = [f for f in _NEW_FORMAT_FIELDS if getattr(self, f) is None]
            if missing:
                raise ValueError(f"schema_version {self.schema_version} requires {', '.join(missing)}")
        if self.oci_runtime.name in (layout.KERNEL, layout.INITRAMFS, layout.METADATA, layout.INSTALL_RECORD):
            raise ValueError(f"oci_runtime.name {self.oci_runtime.name!r} collides with a bundle file")
        if self.files is not None:
            for reserved in (layout.METADATA, layout.INSTALL_RECORD):
                if reserved in self.files:
                    raise ValueError(f"files must not list {reserved} (not a bundle artifact)")
            expected = self._primary_checksums()
            for name, sha in expected.items():
                info = self.files.get(name)
                if info is None:
                    raise ValueError(f"files lacks {name}")
                if info.sha256 != sha:
                    raise ValueError(f"files[{name!r}].sha256 disagrees with the top-level checksum")
        return self

    # --- derived views ----------------------------------------------------------------------------
    def _primary_checksums(self) -> dict[str, str]:
        return {
            layout.KERNEL: self.sha256_vmlinux,
            layout.INITRAMFS: self.sha256_initramfs,
            self.oci_runtime.name: self.oci_runtime.sha256,
        }

    def artifact_checksums(self) -> dict[str, str]:
        """Every artifact file name of the bundle -> expected sha256 (``version.json`` excluded)."""
        out = self._primary_checksums()
        if self.files:
            out.update({name: info.sha256 for name, info in self.files.items()})
        return dict(sorted(out.items()))

    def artifact_sizes(self) -> dict[str, int]:
        """File name -> recorded size, for the files whose size is recorded (schema 2+)."""
        return {name: info.size for name, info in sorted((self.files or {}).items())}

    @property
    def capability_set(self) -> frozenset[KernelCapability]:
        """Known capabilities only; names this release does not know are ignored."""
        known = {c.value for c in KernelCapability}
        return frozenset(KernelCapability(n) for n in self.capabilities if n in known)

    @property
    def unknown_capabilities(self) -> list[str]:
        known = {c.value for c in KernelCapability}
        return [n for n in self.capabilities if n not in known]

    @property
    def is_seed_format(self) -> bool:
        return self.schema_version < 2

    # --- I/O ------------------------------------------------------------------------------------
    @classmethod
    def parse_text(cls, text: str, source: str = "version.json") -> BundleMetadata:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            what = "truncated" if e.pos >= len(text.rstrip()) else "not valid JSON"
            raise InvalidMetadataError(
                f"{source} is {what} ({e.msg} at line {e.lineno} column {e.colno})",
                hint="rebuild the bundle or reinstall it",
            ) from None
        if not isinstance(data, dict):
            raise InvalidMetadataError(
                f"{source} must hold a JSON object, not {type(data).__name__}", hint="rebuild the bundle"
            )
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            raise InvalidMetadataError(
                f"{source} is invalid: {describe_validation_error(e)}", hint="rebuild the bundle"
            ) from None

    @classmethod
    def read(cls, path: Path) -> BundleMetadata:
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise InvalidMetadataError(f"{path} does not exist", hint="point at a built bundle directory") from None
        except (OSError, UnicodeDecodeError) as e:
            raise InvalidMetadataError(f"cannot read {path}: {e}", hint="rebuild the bundle") from None
        return cls.parse_text(text, str(path))

    def to_json(self) -> str:
        """Canonical text: sorted keys, two-space indent, trailing newline."""
        return json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=True) + "\n"

    def write(self, path: Path) -> None:
        """Atomically replace ``path``: temp file in the same dir, fsync, rename, fsync the dir."""
        write_atomic(path, self.to_json().encode())


def describe_validation_error(e: ValidationError, limit: int = 3) -> str:
    """pydantic's errors as one line: ``field: message; field: message (+N more)``."""
    parts = []
    errors = e.errors(include_url=False)
    for err in errors[:limit]:
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        parts.append(f"{loc}: {err['msg']}")
    more = f" (+{len(errors) - limit} more)" if len(errors) > limit else ""
    return "; ".join(parts) + more


def json_schema() -> dict[str, Any]:
    schema = BundleMetadata.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://vz-linux.invalid/schemas/version.schema.json"
    schema["description"] = (
        f"vz-linux bundle metadata (version.json), schema_version {METADATA_SCHEMA_VERSION}. "
        "Seed-format files (youki/sha256_youki) are migrated by the reader and are not described here."
    )
    # schema_version >= 2 files must carry the new-format fields (mirrors BundleMetadata._consistent).
    schema["if"] = {"properties": {"schema_version": {"minimum": 2}}}
    schema["then"] = {"required": list(_NEW_FORMAT_FIELDS)}
    return schema


def schema_text() -> str:
    return json.dumps(json_schema(), indent=2, sort_keys=True) + "\n"
