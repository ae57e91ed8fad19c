"""Boot a bundle: QEMU, the accelerator, virtiofsd, the guest agent's channel, and what runs on them.

``qemu`` (the QEMU command line as a value), ``accel`` (KVM proven or TCG), ``virtiofsd``,
``agent_protocol`` and ``agent_client`` (the wire format and the host side), ``linux_vm``
(``LinuxVm``: one VM's whole life), ``guest_source`` (which kernel + initramfs to boot),
``boot_verify`` (live capability probes), ``bench`` (the boot benchmark) and ``descriptor``
(``vz vm linux init``).
"""

from __future__ import annotations

from .agent_client import AgentClient as AgentClient
from .boot_verify import BootVerification as BootVerification
from .boot_verify import verify_boot as verify_boot
from .linux_vm import LinuxVm as LinuxVm
from .linux_vm import VmConfig as VmConfig
from .linux_vm import VmShare as VmShare
from .qemu import Disk as Disk
