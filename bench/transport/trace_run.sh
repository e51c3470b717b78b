#!/bin/bash
# trace_run.sh - one traced local-path run: a kvtcd with KVTCD_LOCAL_TRACE,
# kvtc_bench_transport with KVTC_TRACE, then trace_join.py (where each
# request's time goes, per stage; see trace_join.py).
#
# usage: trace_run.sh BUILD OUTDIR LABEL "DAEMON_ENV" "CLIENT_ENV" BENCH_ARGS...
#   BUILD      folder with bin/kvtcd and bin/kvtc_bench_transport
#   OUTDIR     the raw traces (LABEL.d.csv, LABEL.c.*.csv), the daemon log
#              and LABEL.json (the joined summary) go here
#   DAEMON_ENV / CLIENT_ENV  "K=V K=V" for the daemon / the bench ("" none)
#   BENCH_ARGS e.g. --sizes 262144 --depth 4 --no-latency
set -u
B=$1 O=$2 L=$3 DENV=$4 CENV=$5
shift 5
mkdir -p "$O"
PF=$(mktemp)
# shellcheck disable=SC2086
env UCX_TLS=tcp KVTCD_LOCAL_TRACE="$O/$L.d.csv" $DENV "$B/bin/kvtcd" --listen 127.0.0.1:0 \
    --admin 127.0.0.1:0 --host-mem 4G --port-file "$PF" > "$O/$L.kvtcd.log" 2>&1 &
KP=$!
for _ in $(seq 100); do
    [ -s "$PF" ] && break
    sleep 0.05
done
PORT=$(awk '{print $1; exit}' "$PF")
rm -f "$PF"
# shellcheck disable=SC2086
env UCX_TLS=tcp KVTC_BENCH_LOCAL=on KVTC_TRACE="$O/$L.c" $CENV "$B/bin/kvtc_bench_transport" \
    --backend kvtc --target "127.0.0.1:$PORT" "$@" > "$O/$L.bench.jsonl"
RC=$?
kill -TERM $KP
wait $KP
echo "== $L (daemon: ${DENV:-default}; client: ${CENV:-default}): $(cat "$O/$L.bench.jsonl" | tr '\n' ' ')"
python3 "$(dirname "$0")/trace_join.py" "$O/$L.d.csv" "$O/$L.c" --label "$L" --json "$O/$L.json"
exit $RC
