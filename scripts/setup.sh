#!/usr/bin/env bash
# Installs exactly the Debian 12 packages Vitrine needs (only those missing) and
# builds it into build/. Safe to run again: it only does what is left to do.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(
  # toolchain
  g++ cmake make ccache pkg-config
  # libraries
  libtorch-dev libopencv-core-dev libopencv-imgproc-dev libopencv-imgcodecs-dev
  nlohmann-json3-dev libspdlog-dev libcli11-dev libgtest-dev zlib1g-dev libjpeg-dev
  libsqlite3-dev libssl-dev libfaiss-dev libcpp-httplib-dev
  # Unicode normalisation of class names and catalogue fields (macOS writes file names NFD)
  libicu-dev
  # headers of Gloo, the CPU backend of libtorch's distributed engine (c10d)
  libgloo-dev
  # oneDNN's headers, for the fused inference path (libtorch links the same library)
  libdnnl-dev
  # the embedded default data set
  dataset-fashion-mnist
  # Debian's libtorch calls the generic BLAS; without an optimised one ViT-B/16 takes
  # ~8.5 s per image instead of ~0.15 s.
  libopenblas0-openmp
  # the reference implementation for golden tests and benchmark peers
  python3 python3-torch python3-torchvision python3-pil python3-numpy
  # the browser test of the service's web page (driven by npm's playwright-core)
  chromium nodejs
)
# npm comes with some Node.js builds and is a package of its own in Debian's.
command -v npm >/dev/null 2>&1 || packages+=(npm)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  sudo_cmd=()
  [[ $(id -u) -eq 0 ]] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends \
    "${missing[@]}"
fi

# playwright-core for the browser test, at the version package-lock.json pins.
if [[ ! -d tests/browser/node_modules/playwright-core ||
      tests/browser/package-lock.json -nt tests/browser/node_modules/.package-lock.json ]]; then
  npm ci --prefix tests/browser --no-audit --no-fund --loglevel=error
fi

jobs=${VITRINE_JOBS:-$(nproc)}
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release ${VITRINE_CMAKE_ARGS:-} >/dev/null
cmake --build build -j "$jobs"
echo "setup: built build/vitrine"
