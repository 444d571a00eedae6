#!/usr/bin/env bash
# Builds Vitrine and runs every test (unit, golden against python3-torch, integration).
# Extra arguments go to ctest, e.g. `scripts/test.sh -L unit`.
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=${VITRINE_JOBS:-$(nproc)}
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release ${VITRINE_CMAKE_ARGS:-} >/dev/null
cmake --build build -j "$jobs"
cd build
ctest --output-on-failure -j "$jobs" "$@"
