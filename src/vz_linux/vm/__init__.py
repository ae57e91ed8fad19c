"""Boot a bundle: QEMU, the accelerator, virtiofsd, the guest agent's channel, and what runs on them.

``qemu`` (the QEMU command line as a value), ``accel`` (KVM proven or TCG), ``virtiofsd``,
``agent_protocol`` and ``agent_client`` (the wire format and the host side), ``linux_vm``
(``LinuxVm``: one VM's whole life), ``guest_source`` (which kernel + initramfs to boot),
``boot_verify`` (live capability probes), ``bench`` (the boot benchmark) and ``descriptor``
(``vz vm linux init``).
"""

from __future__ import annotations

from ..lazy import lazy_exports

TYPE_CHECKING = False  # typing costs milliseconds at start-up; mypy treats it as true

# name -> the module that defines it; imported on first use, so importing a module of this package
# does not import them all (docs/architecture.md, "Start-up")
_EXPORTS: dict[str, str] = {
    "AgentClient": ".agent_client",
    "BootVerification": ".boot_verify",
    "verify_boot": ".boot_verify",
    "LinuxVm": ".linux_vm",
    "VmConfig": ".linux_vm",
    "VmShare": ".linux_vm",
    "Disk": ".qemu",
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:
    from .agent_client import AgentClient as AgentClient
    from .boot_verify import BootVerification as BootVerification
    from .boot_verify import verify_boot as verify_boot
    from .linux_vm import LinuxVm as LinuxVm
    from .linux_vm import VmConfig as VmConfig
    from .linux_vm import VmShare as VmShare
    from .qemu import Disk as Disk
