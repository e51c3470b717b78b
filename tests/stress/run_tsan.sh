#!/bin/bash
# run_tsan.sh KVTCD PIPELINED: start kvtcd (two rails) on free ports, run
# the ThreadSanitizer build of tests/stress/pipelined.c against it over UCX
# tcp with 2 and 8 requests in flight, on the first endpoint only
# (KVTC_RAILS=0), on rails with a thread each (KVTC_RAIL_THREADS=1: the
# gets' 4 MiB buffers take rails, and their 512 KiB hits land on the rail
# threads), and so with the 512 KiB requests on rails too (KVTC_RAIL_MIN),
# the latter once more on one CPU (interleavings a wide machine rarely
# shows: it found a reply freed while UCX still used it), stop kvtcd.
# Fails on any race report, crash, error or wrong byte.
set -u
kvtcd=$1 stress=$2
dir=$(mktemp -d /tmp/kvtc-tsan.XXXXXX)
trap 'kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; rm -rf "$dir"' EXIT
export UCX_TLS=tcp UCX_NET_DEVICES=lo UCX_TCP_CM_REUSEADDR=y UCX_WARN_UNUSED_ENV_VARS=n
"$kvtcd" --listen 127.0.0.1:0 --admin 127.0.0.1:0 --host-mem 512M --data-dir "$dir" \
    --port-file "$dir/ports" --rails 2 >"$dir/kvtcd.log" 2>&1 &
pid=$!
for _ in $(seq 100); do [ -s "$dir/ports" ] && break; sleep 0.1; done
[ -s "$dir/ports" ] || { echo "test-tsan: kvtcd did not start"; cat "$dir/kvtcd.log"; exit 1; }
port=$(awk '{print $1}' "$dir/ports")
rc=0
for how in KVTC_RAILS=0 KVTC_RAIL_THREADS=1 "KVTC_RAIL_THREADS=1 KVTC_RAIL_MIN=262144"; do
    for depth in 2 8; do
        # UCX patches malloc and mmap, which ThreadSanitizer cannot run under.
        env $how UCX_MEM_EVENTS=no UCX_MEM_MALLOC_HOOKS=no UCX_MEM_MMAP_HOOK_MODE=none \
        TSAN_OPTIONS="halt_on_error=1 exitcode=66" \
            timeout 600 "$stress" "127.0.0.1:$port" 48 "$depth" ||
            { rc=1; echo "test-tsan: $how depth $depth failed"; }
    done
done
env KVTC_RAIL_THREADS=1 KVTC_RAIL_MIN=262144 UCX_MEM_EVENTS=no UCX_MEM_MALLOC_HOOKS=no UCX_MEM_MMAP_HOOK_MODE=none \
    TSAN_OPTIONS="halt_on_error=1 exitcode=66" \
    timeout 900 taskset -c 0 "$stress" "127.0.0.1:$port" 48 2 ||
    { rc=1; echo "test-tsan: KVTC_RAIL_THREADS=1 on one CPU failed"; }
[ $rc = 0 ] && echo "test-tsan: no races, every byte right"
exit $rc
