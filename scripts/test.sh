#!/usr/bin/env bash
# The README's test command: set the machine up (idempotent), then run the whole suite.
# Tests that need a compiled kernel take it from the build cache (~/.cache/vz-linux), building it
# once per machine when it is missing.
set -euo pipefail
top="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$top"
bash scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
