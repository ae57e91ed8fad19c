# The default pinned guest-kernel source (Linux 6.12 LTS), readable by make (include) and by
# Python (vz_linux.build.sources.read_pin: `NAME := value` lines only). Other pins live beside it
# as kernel-version-<series>.mk and are chosen with `vz-linux build --kernel-pin <series>` or
# `make -C linux KERNEL_PIN=<series>` (docs/profiles.md, "Kernel pins").
#
# The default source is Debian's linux-source package (these machines reach Debian but not
# kernel.org); its exact upstream version must equal KERNEL_VERSION or the build stops.
# KERNEL_SOURCE_DATE_EPOCH is the date of the pinned package's Debian changelog entry: the build
# epoch of reproducible kernels (vz_linux.build.reproducible) unless SOURCE_DATE_EPOCH is set.
# Bump KERNEL_CACHE_SCHEMA whenever the way kernels are built or cached changes incompatibly:
# it is part of every kernel cache key.
KERNEL_SERIES := 6.12
KERNEL_VERSION := 6.12.118
KERNEL_DEBIAN_PACKAGE := linux-source-6.12
KERNEL_DEBIAN_TARBALL := /usr/src/linux-source-6.12.tar.xz
# 6.12.118-1~deb12u1: Sat, 28 Nov 2026 10:54:11 +0100
KERNEL_SOURCE_DATE_EPOCH := 1795859651
KERNEL_CACHE_SCHEMA := 2
