#!/usr/bin/env bash
# The main job, end to end, on a fresh Debian 12 machine (as root):
# install dependencies, build, start kvtcd on its embedded defaults (no
# config file), store a real model's KV cache through it and restore it,
# raw (bit-exact) and compressed with KVTC (calibrated on the model's own
# KV), then show what compression does to the model's predictions.
#   MODEL  llama2.c checkpoint (default ../shared/models/stories260K.bin)
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${MODEL:-../shared/models/stories260K.bin}
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

echo "== real KV: 9 sequences sampled from $(basename "$MODEL"), 256 tokens each"
for s in 1 2 3 4 5 6 7 8; do
    layout=$("$bin/kvtc-dump-kv" --model "$MODEL" --seed "$s" --out "$work/cal$s.kv")
done
"$bin/kvtc-dump-kv" --model "$MODEL" --seed 1000 --out "$work/conv.kv" >/dev/null
raw_key=$(printf 'quickstart raw' | sha256sum | cut -c1-64)
kvc_key=$(printf 'quickstart kvtc' | sha256sum | cut -c1-64)

echo "== raw: put, get, compare"
"$bin/kvtc" put "$raw_key" "$work/conv.kv"
"$bin/kvtc" get "$raw_key" "$work/conv.back.kv"
cmp "$work/conv.kv" "$work/conv.back.kv" && echo "restored bit-exact ($(stat -c %s "$work/conv.kv") bytes)"

echo "== kvtc: calibrate on 8 sequences, compress the 9th at 4x, store, restore, decode"
"$bin/kvtc" codec calibrate --layout "$layout" --targets 2,4,8 --out "$work/p.kvtcp" "$work"/cal*.kv 2>/dev/null
"$bin/kvtc" codec encode --profile "$work/p.kvtcp" --target 4 --out "$work/conv.kvtc" "$work/conv.kv"
"$bin/kvtc" put "$kvc_key" "$work/conv.kvtc"
"$bin/kvtc" get "$kvc_key" "$work/conv.back.kvtc"
"$bin/kvtc" codec decode --profile "$work/p.kvtcp" --out "$work/conv.decoded.kv" "$work/conv.back.kvtc"
"$bin/kvtc-dump-kv" --diff "$work/conv.kv" "$work/conv.decoded.kv" --dtype bf16
"$bin/kvtc" lookup "$raw_key" "$kvc_key" | sed 's/^/keys found: /'
"$bin/kvtc" stats

echo "== what compression does to the model (prefix KV restored, next tokens scored)"
"$bin/kvtc-quality" --model "$MODEL" --target 4 --sens --calib-seqs 16 --eval-seqs 4 | tail -n 10
