"""Versions the host checks against a bundle (docs/selection.md, "Validation").

A leaf that imports nothing: ``vz-linux --version`` and ``import vz_linux`` read it without
touching package metadata. The package's version is this constant (pyproject.toml reads it:
``[tool.hatch.version]``).
"""

from __future__ import annotations

__version__ = "0.1.0"

# The guest agent is versioned with the package: a bundle built by another release is refused
# unless the caller opts out (require_exact_agent_version=False).
AGENT_VERSION = __version__

# Bumped on any incompatible change to docs/PROTOCOL.md. Must equal VZ_AGENT_PROTOCOL_REVISION in
# guest/agent/protocol.h (a test checks).
AGENT_PROTOCOL_REVISION = 3

# version.json schema version written by this release.
METADATA_SCHEMA_VERSION = 2
