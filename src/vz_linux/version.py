"""Versions the host checks against a bundle (docs/selection.md, "Validation")."""

from __future__ import annotations

from importlib import metadata

try:
    __version__ = metadata.version("vz-linux")
except metadata.PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.1.0"

# The guest agent is versioned with the package: a bundle built by another release is refused
# unless the caller opts out (require_exact_agent_version=False).
AGENT_VERSION = __version__

# Bumped on any incompatible change to docs/PROTOCOL.md. Must equal VZ_AGENT_PROTOCOL_REVISION in
# guest/agent/protocol.h (a test checks).
AGENT_PROTOCOL_REVISION = 3

# version.json schema version written by this release.
METADATA_SCHEMA_VERSION = 2
