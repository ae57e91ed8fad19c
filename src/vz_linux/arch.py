"""Guest architectures and everything that differs between them."""

from __future__ import annotations

import enum
import platform

from .errors import InvalidConfigError


class Architecture(enum.StrEnum):
    x86_64 = "x86_64"
    arm64 = "arm64"

    @classmethod
    def parse(cls, name: str) -> Architecture:
        aliases = {"amd64": "x86_64", "x86-64": "x86_64", "aarch64": "arm64"}
        name = aliases.get(name, name)
        try:
            return cls(name)
        except ValueError:
            raise InvalidConfigError(
                f"unknown architecture {name!r}; valid: {', '.join(a.value for a in cls)}"
            ) from None

    @classmethod
    def host(cls) -> Architecture:
        return cls.parse(platform.machine())

    @property
    def kernel_arch(self) -> str:
        """Value of the kernel's ARCH= (and SRCARCH)."""
        return {Architecture.x86_64: "x86", Architecture.arm64: "arm64"}[self]

    @property
    def gnu_triplet(self) -> str:
        return {Architecture.x86_64: "x86_64-linux-gnu", Architecture.arm64: "aarch64-linux-gnu"}[self]

    @property
    def debian_arch(self) -> str:
        return {Architecture.x86_64: "amd64", Architecture.arm64: "arm64"}[self]

    @property
    def oci_architecture(self) -> str:
        """The OCI image index's ``platform.architecture`` (Go's GOARCH)."""
        return {Architecture.x86_64: "amd64", Architecture.arm64: "arm64"}[self]

    @classmethod
    def from_oci(cls, name: str) -> Architecture | None:
        """The architecture an OCI ``platform.architecture`` names, or None for one we do not build."""
        return next((a for a in cls if a.oci_architecture == name), None)

    def cross_compile_prefix(self) -> str:
        """CROSS_COMPILE= for building on this host ("" when native)."""
        return "" if self is Architecture.host() else f"{self.gnu_triplet}-"

    @property
    def kernel_image_path(self) -> str:
        """Path of the bundle's ``vmlinux`` inside the kernel build dir (the README's bundle table)."""
        return {Architecture.x86_64: "vmlinux", Architecture.arm64: "arch/arm64/boot/Image"}[self]

    @property
    def kernel_make_target(self) -> str:
        """The kernel's make target that produces :attr:`kernel_image_path`."""
        return {Architecture.x86_64: "vmlinux", Architecture.arm64: "Image"}[self]

    @property
    def file_machine(self) -> str:
        """How ``file`` names this machine in an ELF header (checks of static binaries)."""
        return {Architecture.x86_64: "x86-64", Architecture.arm64: "ARM aarch64"}[self]

    @property
    def qemu_machine(self) -> str:
        """QEMU's machine type: microvm boots the PVH vmlinux directly; arm64 has virt."""
        return {Architecture.x86_64: "microvm", Architecture.arm64: "virt"}[self]

    @property
    def serial_console(self) -> str:
        """The kernel's name for the machine's first serial port (``console=``)."""
        return {Architecture.x86_64: "ttyS0", Architecture.arm64: "ttyAMA0"}[self]

    @property
    def qemu_binary(self) -> str:
        return {Architecture.x86_64: "qemu-system-x86_64", Architecture.arm64: "qemu-system-aarch64"}[self]
