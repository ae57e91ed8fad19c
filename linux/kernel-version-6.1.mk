# The Linux 6.1 pin (the previous default), chosen with `vz-linux build --kernel-pin 6.1` or
# `make -C linux KERNEL_PIN=6.1`. Same fields as kernel-version.mk (read there what each means).
KERNEL_SERIES := 6.1
KERNEL_VERSION := 6.1.192
KERNEL_DEBIAN_PACKAGE := linux-source-6.1
KERNEL_DEBIAN_TARBALL := /usr/src/linux-source-6.1.tar.xz
# 6.1.192-3: Thu, 26 Nov 2026 18:12:56 +0100
KERNEL_SOURCE_DATE_EPOCH := 1795713176
KERNEL_CACHE_SCHEMA := 2
