#!/usr/bin/env bash
# The main job, end to end, on a fresh Debian 12 machine (as root): install
# dependencies, build, start kvtcd on its embedded defaults (no config file),
# and run `kvtc demo` against it: a real model (stories260K, on the CPU)
# fills its KV cache with a conversation, the cache is stored in kvtcd
# compressed with KVTC (calibrated on the model's own KV), restored into a
# fresh cache, and generation continues from it. The demo prints the ratio,
# the agreement with the uncompressed run, and put/get throughput.
#   MODEL  llama2.c checkpoint (default ../shared/models/stories260K.bin)
#   RATIO  target compression ratio (default 4)
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${MODEL:-../shared/models/stories260K.bin}
RATIO=${RATIO:-4}
deploy/install-deps.sh
make -j"$(nproc)" >/dev/null
[ -r "$MODEL" ] || { echo "quickstart: $MODEL not found (set MODEL=)" >&2; exit 1; }

bin=build/bin
work=$(mktemp -d /tmp/kvtc-quickstart.XXXXXX)
"$bin/kvtcd" --data-dir "$work/data" --port-file "$work/ports" 2> "$work/kvtcd.log" &
daemon=$!
trap 'kill -TERM $daemon 2>/dev/null; wait $daemon 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 100); do
    [ -s "$work/ports" ] && break
    kill -0 $daemon 2>/dev/null || { echo "quickstart: kvtcd did not start:" >&2; cat "$work/kvtcd.log" >&2; exit 1; }
    sleep 0.1
done
[ -s "$work/ports" ] || { echo "quickstart: kvtcd not listening after 10 s" >&2; exit 1; }
echo "== kvtcd serving on its defaults: 127.0.0.1:7700 (admin http://127.0.0.1:7701/metrics)"

echo "== kvtc demo: $(basename "$MODEL")'s KV stored at ${RATIO}x, restored, continued"
"$bin/kvtc" demo -s 127.0.0.1:7700 --model "$MODEL" --ratio "$RATIO"

echo "== the daemon afterwards"
"$bin/kvtc" -s 127.0.0.1:7700 stats
