"""OCI containers in micro-VMs: ``vz oci …``.

``config`` (``RuntimeConfig``), ``image`` (rootfs directory or OCI image layout → rootfs),
``spec`` (runtime-spec ``config.json``), ``guest`` (what runs inside the VM), ``container``
(run/create/start/exec/stop over a VM), ``supervisor`` (the per-container process that keeps a VM
alive between CLI invocations), ``state`` (container records under the data dir) and
``lifecycle`` (the commands over records and supervisors).
"""

from __future__ import annotations

from ..lazy import lazy_exports

TYPE_CHECKING = False  # typing costs milliseconds at start-up; mypy treats it as true

# name -> the module that defines it; imported on first use, so importing a module of this package
# does not import them all (docs/architecture.md, "Start-up")
_EXPORTS: dict[str, str] = {
    "RuntimeConfig": ".config",
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:
    from .config import RuntimeConfig as RuntimeConfig
