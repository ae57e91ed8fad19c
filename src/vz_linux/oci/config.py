"""Runtime settings of the OCI path and how they pick the guest kernel."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from .. import layout
from ..bundle.model import KernelBundle
from ..bundle.resolve import ensure_installed_profile
from ..errors import InvalidConfigError
from ..profiles import KernelProfile
from .store import ImageStore

AGENT_READY_TIMEOUT_ENV = "VZ_AGENT_READY_TIMEOUT_SECS"
DATA_DIR_ENV = "VZ_OCI_DATA_DIR"
# Far above a boot's usual time to agent-ready (docs/oci.md, "Performance"): a loaded CI host
# under TCG is many times slower than an idle one.
DEFAULT_AGENT_READY_TIMEOUT = 60.0


def default_data_dir() -> Path:
    env = os.environ.get(DATA_DIR_ENV)
    return Path(env) if env else layout.home_dir() / ".vz" / "oci"


def agent_ready_timeout_from_env() -> float:
    raw = os.environ.get(AGENT_READY_TIMEOUT_ENV)
    if raw is None or not raw.strip():
        return DEFAULT_AGENT_READY_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        raise InvalidConfigError(f"{AGENT_READY_TIMEOUT_ENV}={raw!r} is not a number of seconds") from None
    if value <= 0:
        raise InvalidConfigError(f"{AGENT_READY_TIMEOUT_ENV}={raw!r} must be positive")
    return value


@dataclass(frozen=True)
class RuntimeConfig:
    """How containers are run: which kernel profile boots their VM, and the VM's size."""

    linux_profile: KernelProfile | None = None
    data_dir: Path = field(default_factory=default_data_dir)
    cpus: int = 1
    memory_mib: int = 256
    network: bool = False
    agent_ready_timeout: float = field(default_factory=agent_ready_timeout_from_env)
    exec_timeout: float | None = None  # None: the container may run as long as it likes

    def __post_init__(self) -> None:
        if self.cpus < 1:
            raise InvalidConfigError(f"cpus must be at least 1, not {self.cpus}")
        if self.memory_mib < 64:
            raise InvalidConfigError(f"memory must be at least 64 MiB, not {self.memory_mib}")
        if self.exec_timeout is not None and self.exec_timeout <= 0:
            raise InvalidConfigError("exec timeout must be positive")

    @property
    def containers_dir(self) -> Path:
        return self.data_dir / "containers"

    @property
    def images_dir(self) -> Path:
        """Unpacked root filesystems, one per manifest digest."""
        return self.data_dir / "images"

    @property
    def store_dir(self) -> Path:
        """The local OCI image store registry images are pulled into (:mod:`.store`)."""
        return self.data_dir / "store"

    def image_store(self) -> ImageStore:
        return ImageStore(self.store_dir)

    def resolve_kernel(self) -> KernelBundle:
        """The validated, installed bundle this config boots (docs/selection.md)."""
        return ensure_installed_profile(self.linux_profile)
