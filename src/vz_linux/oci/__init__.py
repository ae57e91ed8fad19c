"""OCI containers in micro-VMs (SPEC §7): ``vz oci …`` and ``vz vm linux init``.

Modules, one job each: :mod:`.config` (``RuntimeConfig``, kernel resolution), :mod:`.image`
(rootfs directory or OCI image layout → rootfs), :mod:`.spec` (runtime-spec ``config.json``),
:mod:`.guest` (what runs inside the VM), :mod:`.runtime` (run/create/start/exec/stop over a VM),
:mod:`.supervisor` (the per-container process that keeps a VM alive between CLI invocations),
:mod:`.state` (container records under the data dir), :mod:`.vm_descriptor` (``N.linux.json``).
"""

from .config import RuntimeConfig

__all__ = ["RuntimeConfig"]
