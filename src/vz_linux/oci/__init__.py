"""OCI containers in micro-VMs: ``vz oci …``.

``config`` (``RuntimeConfig``), ``image`` (rootfs directory or OCI image layout → rootfs),
``spec`` (runtime-spec ``config.json``), ``guest`` (what runs inside the VM), ``container``
(run/create/start/exec/stop over a VM), ``supervisor`` (the per-container process that keeps a VM
alive between CLI invocations), ``state`` (container records under the data dir) and
``lifecycle`` (the commands over records and supervisors).
"""

from __future__ import annotations

from .config import RuntimeConfig as RuntimeConfig
