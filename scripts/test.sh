#!/usr/bin/env bash
# The README's test command: set the machine up (idempotent), warm the build cache, run the suite.
#
# Tests that need a compiled kernel take it from the build cache (~/.cache/vz-linux, outside the
# checkout). On a fresh machine the container kernels (x86_64 and arm64) and static crun are
# compiled once here, before pytest, so no per-test timeout has to cover a kernel compile; on a
# machine whose cache holds them this step takes seconds and compiles nothing.
set -euo pipefail
top="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$top"
bash scripts/setup.sh

warm="$(mktemp -d /tmp/vz-linux-warm.XXXXXX)"
trap 'rm -rf "$warm"' EXIT
for arch in x86_64 arm64; do
  .venv/bin/vz-linux build --profile container --arch "$arch" --out "$warm/container-$arch"
done
rm -rf "$warm"

.venv/bin/python -m pytest "$@"
