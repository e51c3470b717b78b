#!/bin/bash
# full_puts.sh - puts into a full host tier: what one eviction a put costs.
#
#   bench/tiers/full_puts.sh [--host-mem SIZE] [--size SIZE] [--runs N]
#                            [--count N] [--disk SIZE] [--json PATH]
#                            KVTCD [KVTCD...]
#
# For each kvtcd binary given (e.g. the build before a change and after),
# RUNS times, interleaved: start it with --host-mem (default 2G; no disk
# tier unless --disk SIZE, a cache-mode one under /tmp; no GPU tier),
# fill the host tier with SIZE chunks (default 256K) at 4 puts in
# flight, then three rounds of as many puts of new keys (or N, --count),
# each of which evicts. Prints GB/s and P50 per round and, with --json, writes them.
# The client is kvtc from the build of the first binary (its bin/).
set -eu
host_mem=2G size=256K runs=2 json= per_round= disk=
while [ $# -gt 0 ]; do
    case $1 in
    --host-mem) host_mem=$2; shift 2 ;;
    --size) size=$2; shift 2 ;;
    --runs) runs=$2; shift 2 ;;
    --count) per_round=$2; shift 2 ;;
    --disk) disk=$2; shift 2 ;;
    --json) json=$2; shift 2 ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) break ;;
    esac
done
[ $# -ge 1 ] || { echo "full_puts.sh: no kvtcd given (--help)" >&2; exit 2; }
kvtc=$(dirname "$1")/kvtc
[ -x "$kvtc" ] || { echo "full_puts.sh: no kvtc next to $1" >&2; exit 2; }
bytes() { numfmt --from=iec "$1"; }
count=$(( $(bytes "$host_mem") / $(bytes "$size") ))
per_round=${per_round:-$count}
export KVTC_LOCAL=off # bytes as UCX payloads, as from another host
dir=$(mktemp -d /tmp/kvtc-full-puts.XXXXXX)
pid=
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$dir"' EXIT
rows=()
put() { # PORT ID COUNT: "GB/s P50"
    "$kvtc" -s "127.0.0.1:$1" bench --op put --keep --depth 4 --size "$size" \
        --count "$3" --id "$2" 2>&1 | awk '/^put /{print $6, $11}'
}
printf '%-40s %6s  %-18s  %-18s  %-18s  %-18s\n' kvtcd run fill "round 1" "round 2" "round 3"
for run in $(seq "$runs"); do
    for bin in "$@"; do
        rm -rf "$dir/d"; mkdir -p "$dir/d"
        disk_args=()
        [ -n "$disk" ] && disk_args=(--disk-dir "$dir/d/disk" --disk-size "$disk")
        "$bin" --listen 127.0.0.1:0 --admin 127.0.0.1:0 --host-mem "$host_mem" \
            --data-dir "$dir/d" "${disk_args[@]}" --port-file "$dir/ports" > "$dir/log" 2>&1 &
        pid=$!
        for _ in $(seq 100); do [ -s "$dir/ports" ] && break; sleep 0.1; done
        port=$(cut -d' ' -f1 "$dir/ports")
        rm -f "$dir/ports"
        out=("$(put "$port" 1 "$count")")
        for r in 2 3 4; do out+=("$(put "$port" "$r" "$per_round")"); done
        kill "$pid"; wait "$pid" || true; pid=
        printf '%-40s %6s' "$bin" "$run"
        for o in "${out[@]}"; do printf '  %-18s' "$(echo "$o" | awk '{printf "%s (%s us)", $1, $2}')"; done
        echo
        rows+=("{\"kvtcd\":\"$bin\",\"run\":$run,\"gbps\":[$(printf '%s\n' "${out[@]}" | awk '{print $1}' | paste -sd,)],\"p50_us\":[$(printf '%s\n' "${out[@]}" | awk '{print $2}' | paste -sd,)]}")
    done
done
echo "(GB/s and P50 per round; fill: the empty tier filled, rounds: one eviction a put)"
if [ -n "$json" ]; then
    printf '{"host_mem":"%s","disk":"%s","size":"%s","fill":%d,"per_round":%d,"depth":4,"rows":[%s]}\n' \
        "$host_mem" "${disk:-none}" "$size" "$count" "$per_round" "$(IFS=,; echo "${rows[*]}")" > "$json"
fi
