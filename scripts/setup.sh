#!/usr/bin/env bash
# One-time (idempotent) setup of a Debian 12 host for vz-linux: system packages
# through apt (with arm64 multiarch + deb-src for the crun source package) and
# the Python environment in .venv/ at the checkout root.
set -euo pipefail
top="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$top"

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

APT_PACKAGES=(
  # kernel build
  build-essential flex bison bc libelf-dev libssl-dev cpio xz-utils zstd kmod
  # the default kernel pin (linux/kernel-version.mk) and the 6.1 pin (linux/kernel-version-6.1.mk)
  linux-source-6.12 linux-source-6.1
  gcc-aarch64-linux-gnu binutils-aarch64-linux-gnu
  # aarch64 static links (crun, agent) need the cross libc.a
  libc6-dev-arm64-cross
  # guest userland
  busybox-static file dpkg-dev pkg-config autoconf automake libtool
  libyajl-dev libseccomp-dev libcap-dev libgcrypt20-dev libgpg-error-dev
  # fuzzing the agent's frame decoder (libFuzzer)
  clang-14 libclang-rt-14-dev
  # booting
  qemu-system-x86 qemu-system-arm qemu-utils
  # read-only virtiofs shares: virtiofsd runs in a mount namespace with a read-only bind (docs/security.md)
  bubblewrap
  # OCI image layouts for tests/benchmarks
  umoci
  # verify --boot's btrfs_snapshots probe: the host makes a small btrfs image (mkfs.btrfs --mixed)
  btrfs-progs
  # a throw-away TLS certificate for the download tests' HTTPS server on 127.0.0.1
  openssl
  # another wall clock for the reproducible-initramfs test (tests/guest/test_initramfs.py)
  faketime
  # an lz4-compressed initramfs (vz-linux build --initramfs-compression lz4; the kernel needs RD_LZ4)
  lz4
  # distribution: release signatures (ssh-keygen -Y), the registry client; tests: a local
  # distribution registry with htpasswd (bcrypt) basic auth
  openssh-client skopeo docker-registry apache2-utils
  python3-venv
  # hermetic builds (docs/reproducible.md): the Debian build root is made by mmdebstrap (and entered
  # with bubblewrap, above); benchmarks/check_reproducible.py explains differing files with diffoscope
  mmdebstrap diffoscope-minimal
)

need_update=0
if ! dpkg --print-foreign-architectures | grep -qx arm64; then
  $SUDO dpkg --add-architecture arm64
  need_update=1
fi
src_list=/etc/apt/sources.list.d/vz-linux-deb-src.sources
if [ ! -f "$src_list" ]; then
  $SUDO tee "$src_list" >/dev/null <<'SRC'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  need_update=1
fi

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ] || [ "$need_update" -eq 1 ]; then
  # a new architecture or deb-src entry needs fresh lists even when every package is present
  $SUDO apt-get update -qq
fi
if [ "${#missing[@]}" -gt 0 ]; then
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# Python environment: locked dependencies, the package installed editable.
if [ ! -x .venv/bin/python ] || [ ! -x .venv/bin/pip ]; then
  # (re)create: a venv interrupted half-way has python but no pip
  rm -rf .venv
  python3 -m venv .venv
fi
stamp=.venv/.vz-linux-lock.sha256
want="$(sha256sum requirements.lock pyproject.toml | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -r requirements.lock
  .venv/bin/pip install -q --no-deps -e .
  echo "$want" > "$stamp"
fi
