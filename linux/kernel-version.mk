# The pinned guest-kernel source, readable by make (include) and by Python
# (vz_linux.sources.read_pin: `NAME := value` lines only).
#
# The default source is Debian's linux-source package (these machines reach Debian but not
# kernel.org); its exact upstream version must equal KERNEL_VERSION or the build stops.
# Bump KERNEL_CACHE_SCHEMA whenever the way kernels are built or cached changes incompatibly:
# it is part of every kernel cache key.
KERNEL_SERIES := 6.1
KERNEL_VERSION := 6.1.192
KERNEL_DEBIAN_PACKAGE := linux-source-6.1
KERNEL_DEBIAN_TARBALL := /usr/src/linux-source-6.1.tar.xz
KERNEL_CACHE_SCHEMA := 1
