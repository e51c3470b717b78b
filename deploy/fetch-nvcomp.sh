#!/bin/sh
# fetch-nvcomp.sh [DIR] - nvCOMP (headers + libnvcomp.so) for the GPU codec,
# from the PyPI wheel nvidia-libnvcomp-cu13, unpacked into DIR (default
# .deps/nvcomp, git-ignored): DIR/include, DIR/lib/libnvcomp.so.6.
# Idempotent: does nothing when DIR already holds the library.
set -eu
dir=${1:-.deps/nvcomp}
if [ -f "$dir/lib/libnvcomp.so.6" ] && [ -f "$dir/include/nvcomp/deflate.h" ]; then
    exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps --only-binary=:all: nvidia-libnvcomp-cu13 -d "$tmp"
whl=$(ls "$tmp"/nvidia_libnvcomp_cu13-*.whl | head -n 1)
python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' "$whl" "$tmp/x"
mkdir -p "$dir/lib"
rm -rf "$dir/include"
cp -r "$tmp/x/nvidia/libnvcomp/include" "$dir/include"
cp "$tmp/x/nvidia/libnvcomp/lib64/libnvcomp.so.6" "$dir/lib/"
cp "$tmp/x/nvidia/libnvcomp/LICENSE" "$dir/" 2>/dev/null || true
basename "$whl" > "$dir/VERSION"
echo "nvcomp: $(cat "$dir/VERSION") -> $dir"
