# gpu-env.sh - sourced on the GPU machine (device tool) before running
# GPU binaries built here: unpacks the carried runtime .debs and points the
# loader at them, CUDA and nvCOMP (see ../shared/device/README.md).
# Carry: build folder, .deps (deploy/fetch-nvcomp.sh), .devdebs
# (../shared/device/fetch-runtime-debs.sh .devdebs) and .gpushared, a copy
# of ../shared/models (mkdir -p .gpushared/models; cp ../shared/models/* there;
# ignored through .git/info/exclude), since ../shared does not travel.
mkdir -p /tmp/rt && for f in .devdebs/*.deb; do dpkg -x "$f" /tmp/rt; done
export LD_LIBRARY_PATH=/tmp/rt/usr/lib/x86_64-linux-gnu:/tmp/rt/usr/lib/x86_64-linux-gnu/openblas-pthread:$PWD/.deps/nvcomp/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
export PATH=/tmp/rt/usr/bin:/usr/local/cuda/bin:$PATH
export KVTC_SHARED=$PWD/.gpushared KVTC_BUILD=$PWD/build-gpu
