#!/bin/sh
# Install every Debian package that kvtc's build, tests and benchmarks need.
# Idempotent and non-interactive; run as root on Debian 12 (bookworm).
#   deploy/install-deps.sh          build + tests + benchmarks
set -eu
export DEBIAN_FRONTEND=noninteractive

pkgs="build-essential pkg-config git ca-certificates python3 python3-venv python3-pip
      libdeflate-dev zlib1g-dev libzstd-dev libxxhash-dev
      libopenblas-dev liblapacke-dev
      libcriterion-dev clang libclang-rt-14-dev
      libuv1-dev libucx-dev ucx-utils libprotobuf-c-dev protobuf-c-compiler
      libinih-dev liburing-dev libhttp-parser-dev libssl-dev
      redis-server libhiredis-dev fio
      python3-doc fortunes-min python3-matplotlib python3-numpy"

missing=""
for p in $pkgs; do
    dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$' \
        || missing="$missing $p"
done
if [ -z "$missing" ]; then
    echo "install-deps: all packages present"
elif [ "$(id -u)" != 0 ]; then
    echo "install-deps: missing packages:$missing (run as root)" >&2
    exit 1
else
    echo "install-deps: installing$missing"
    apt-get update -qq
    # shellcheck disable=SC2086
    apt-get install -y -qq --no-install-recommends $missing >/dev/null
    echo "install-deps: done"
fi

# The GPU codec builds wherever nvcc is (CUDA toolkit, not a Debian package
# here) and needs nvCOMP, which PyPI ships as a wheel.
if command -v nvcc >/dev/null 2>&1 || [ -x /usr/local/cuda/bin/nvcc ]; then
    "$(dirname "$0")/fetch-nvcomp.sh" "$(dirname "$0")/../.deps/nvcomp" ||
        echo "install-deps: nvCOMP download failed: the GPU codec will not be built" >&2
fi
