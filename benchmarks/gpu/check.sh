#!/usr/bin/env bash
# The GPU check (see benchmarks/gpu/check.py): from the repository root of a GPU machine,
#   benchmarks/gpu/check.sh [OUT_DIR] [--budget SECONDS] [--only PART,...]
# Installed packages only; results (check.md, check.json, check.log, tests.log) go to OUT_DIR.
set -euo pipefail
cd "$(dirname "$0")/../.."
exec python3 benchmarks/gpu/check.py "$@"
