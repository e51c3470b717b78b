#!/bin/sh
# bench/e2e/run.sh [e2e.py options] - start a kvtcd on loopback, run
# bench/e2e/e2e.py against it, stop the daemon (its log tail is printed when
# the bench fails). From the repository root.
#
# Environment: KVTC_BUILD (build folder holding bin/kvtcd, lib/libkvtc.so,
# lib/libkvtc_gpu.so; default build), KVTC_E2E_PYTHON (default python3: the
# one with torch + transformers), KVTC_E2E_HOST_MEM (kvtcd --host-mem;
# default 24G: 4 GiB of raw 32K-token KV plus the compressed copies and the
# raw chunks awaiting compression), UCX_TLS (default tcp,sm,self, as the
# integration tests' ITEST_TLS_SM).
set -eu
cd "$(dirname "$0")/../.."
BUILD=${KVTC_BUILD:-build}
PY=${KVTC_E2E_PYTHON:-python3}
KVTCD=$BUILD/bin/kvtcd
[ -x "$KVTCD" ] || { echo "bench-e2e: $KVTCD not built (make BUILD=$BUILD)" >&2; exit 2; }
export KVTC_BUILD=$(cd "$BUILD" && pwd)
export UCX_NET_DEVICES=lo UCX_TCP_CM_REUSEADDR=y UCX_TLS=${UCX_TLS:-tcp,sm,self}

tmp=$(mktemp -d "${TMPDIR:-/tmp}/kvtc-e2e.XXXXXX")
"$KVTCD" --listen 127.0.0.1:0 --admin 127.0.0.1:0 --host-mem "${KVTC_E2E_HOST_MEM:-24G}" \
    --port-file "$tmp/ports" >"$tmp/kvtcd.log" 2>&1 &
pid=$!
stop() {
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    rm -rf "$tmp"
}
trap stop EXIT INT TERM

i=0
while :; do
    if ! kill -0 "$pid" 2>/dev/null; then
        echo "bench-e2e: kvtcd exited at start:" >&2
        cat "$tmp/kvtcd.log" >&2
        exit 1
    fi
    if [ -s "$tmp/ports" ]; then
        read -r port admin <"$tmp/ports" || true
        [ -n "${admin:-}" ] && break
    fi
    i=$((i + 1))
    [ $i -lt 500 ] || { echo "bench-e2e: kvtcd wrote no port file" >&2; exit 1; }
    sleep 0.02
done
export KVTC_SERVER=127.0.0.1:$port KVTC_ADMIN=127.0.0.1:$admin
echo "bench-e2e: kvtcd pid $pid on $KVTC_SERVER (admin $KVTC_ADMIN), UCX_TLS=$UCX_TLS," \
     "host-mem ${KVTC_E2E_HOST_MEM:-24G}"

rc=0
PYTHONUNBUFFERED=1 "$PY" bench/e2e/e2e.py "$@" || rc=$?
if [ $rc -ne 0 ]; then
    echo "bench-e2e: failed ($rc); kvtcd log tail:" >&2
    tail -n 30 "$tmp/kvtcd.log" >&2
fi
exit $rc
