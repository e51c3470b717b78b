# gpu-env.sh - sourced on the GPU machine (device tool) before running
# GPU binaries built here: unpacks the carried runtime .debs and points the
# loader at them, CUDA and nvCOMP (see ../shared/device/README.md).
mkdir -p /tmp/rt && for f in .devdebs/*.deb; do dpkg -x "$f" /tmp/rt; done
export LD_LIBRARY_PATH=/tmp/rt/usr/lib/x86_64-linux-gnu:/tmp/rt/usr/lib/x86_64-linux-gnu/openblas-pthread:$PWD/.deps/nvcomp/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
export PATH=/tmp/rt/usr/bin:/usr/local/cuda/bin:$PATH
export KVTC_SHARED=$PWD/.gpushared KVTC_BUILD=$PWD/build-gpu
