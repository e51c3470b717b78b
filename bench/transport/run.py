#!/usr/bin/env python3
"""Transport benchmark driver: kvtcd against its physical limit and against
what users pick today, in one run on loopback.

  (a) ucx_perftest ucp_am_bw, server + client process, per UCX_TLS set
  (b) redis-server (no persistence) through hiredis: SET/GET of the same values
  (c) kvtcd through libkvtc: put/get throughput per chunk size and P50/P99 of
      single-chunk gets with 1, 16 and 64 concurrent clients

Prints a table and writes bench/results/transport.json. The C program
kvtc_bench_transport does (b) and (c) with the identical workload.

  python3 bench/transport/run.py [--build build] [--quick]
"""
import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time

MIB = 1 << 20
SIZES = [256 << 10, 1 << 20, 4 << 20, 8 << 20, 16 << 20, 32 << 20]
TLS_SETS = ["tcp,sm,self", "tcp"]


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ucx_env(tls):
    env = dict(os.environ)
    env.update({"UCX_TLS": tls, "UCX_NET_DEVICES": "lo", "UCX_TCP_CM_REUSEADDR": "y",
                "UCX_WARN_UNUSED_ENV_VARS": "n"})
    return env


def wait_port(port, timeout=10.0):
    end = time.time() + timeout
    while time.time() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def listening(port, timeout=5.0):
    """Wait until something listens on port, without connecting: a probe
    connection would be taken by ucx_perftest's server as its one client."""
    want = f":{port:04X} "
    end = time.time() + timeout
    while time.time() < end:
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            try:
                with open(table) as f:
                    for line in f.readlines()[1:]:
                        fields = line.split()
                        if fields[1].endswith(want.strip()) and fields[3] == "0A":
                            return True
            except OSError:
                pass
        time.sleep(0.02)
    return False


def perftest(tls, size, total_bytes):
    """ucp_am_bw of one size; returns overall bandwidth in MiB/s or None."""
    iters = max(20, min(20000, total_bytes // size))
    warm = max(4, iters // 10)
    env = ucx_env(tls)
    for attempt in range(3):
        port = free_port()
        srv = subprocess.Popen(["ucx_perftest", "-p", str(port)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            # The server listens for the test parameters on the port.
            if not listening(port):
                continue
            out = subprocess.run(["ucx_perftest", "127.0.0.1", "-p", str(port), "-t", "ucp_am_bw",
                                  "-s", str(size), "-n", str(iters), "-w", str(warm), "-f", "-v"],
                                 env=env, capture_output=True, text=True, timeout=120)
            rows = [l for l in out.stdout.splitlines() if l.strip() and l.strip()[0].isdigit()]
            if out.returncode == 0 and rows:
                f = rows[-1].split(",")
                # iterations,p50_lat,avg_lat,overall_lat,avg_bw,overall_bw,avg_mr,overall_mr
                return {"iters": iters, "mib_s": float(f[5]), "lat_us": float(f[3])}
            log(f"ucx_perftest {tls} {size}: rc={out.returncode} {out.stderr.strip()[-300:]}")
        finally:
            srv.kill()
            srv.wait()
    return None


def run_bench(binary, backend, target, env, args):
    cmd = [binary, "--backend", backend, "--target", target,
           "--sizes", ",".join(str(s) for s in args.sizes),
           "--bytes-per-size", str(args.bytes_per_size),
           "--lat-size", str(args.lat_size), "--clients", ",".join(str(c) for c in args.clients),
           "--lat-ops", str(args.lat_ops)]
    log("  " + " ".join(cmd))
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    rows = [json.loads(l) for l in out.stdout.splitlines() if l.startswith("{")]
    if out.returncode != 0:
        log(f"  {backend} bench failed (rc={out.returncode}): {out.stderr.strip()[-800:]}")
    return rows, out.returncode


def redis_run(binary, args):
    port = free_port()
    srv = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                            "--save", "", "--appendonly", "no", "--protected-mode", "no",
                            "--daemonize", "no", "--loglevel", "warning"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        if not wait_port(port):
            log("redis-server did not start")
            return [], "redis-server did not start"
        rows, rc = run_bench(binary, "redis", f"127.0.0.1:{port}", dict(os.environ), args)
        return rows, None if rc == 0 else f"bench exited {rc}"
    finally:
        srv.terminate()
        srv.wait()


def kvtcd_run(kvtcd, binary, tls, args):
    env = ucx_env(tls)
    with tempfile.TemporaryDirectory(prefix="kvtc-bt-") as tmp:
        pf = os.path.join(tmp, "ports")
        logf = open(os.path.join(tmp, "kvtcd.log"), "w+")
        d = subprocess.Popen([kvtcd, "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0",
                              "--host-mem", args.host_mem, "--data-dir", tmp, "--port-file", pf],
                             env=env, stdout=logf, stderr=subprocess.STDOUT)
        try:
            port = None
            end = time.time() + 15
            while time.time() < end and d.poll() is None:
                try:
                    with open(pf) as f:
                        parts = f.read().split()
                    if len(parts) >= 1:
                        port = int(parts[0])
                        break
                except (OSError, ValueError):
                    pass
                time.sleep(0.05)
            if port is None:
                logf.seek(0)
                return [], "kvtcd did not start: " + logf.read()[-500:]
            rows, rc = run_bench(binary, "kvtc", f"127.0.0.1:{port}", env, args)
            return rows, None if rc == 0 else f"bench exited {rc}"
        finally:
            d.terminate()
            try:
                d.wait(10)
            except subprocess.TimeoutExpired:
                d.kill()
                d.wait()
            logf.close()


def pick(rows, test, **kw):
    for r in rows:
        if r.get("test") == test and all(r.get(k) == v for k, v in kw.items()):
            return r
    return None


def ratio(a, b):
    return round(a / b, 3) if a and b else None


def fmt(v, w=9, p=0):
    return f"{v:>{w}.{p}f}" if isinstance(v, (int, float)) else f"{'-':>{w}}"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default="build")
    ap.add_argument("--out", default="bench/results/transport.json")
    ap.add_argument("--quick", action="store_true", help="fewer bytes per point (smoke run)")
    ap.add_argument("--lat-size", type=int, default=1 << 20)
    ap.add_argument("--host-mem", default="4G")
    args = ap.parse_args()
    args.sizes = SIZES
    args.clients = [1, 16, 64]
    args.bytes_per_size = (64 if args.quick else 512) * MIB
    args.lat_ops = 1024 if args.quick else 4096

    binary = os.path.join(args.build, "bin", "kvtc_bench_transport")
    kvtcd = os.path.join(args.build, "bin", "kvtcd")
    if not os.access(binary, os.X_OK):
        sys.exit(f"missing {binary}: run make bench first")

    result = {"host": platform.node(), "cpus": os.cpu_count(), "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "sizes": args.sizes, "lat_size": args.lat_size, "bytes_per_size": args.bytes_per_size,
              "ucx_perftest": {}, "redis": {}, "kvtc": {}, "notes": []}

    for tls in TLS_SETS:
        log(f"ucx_perftest ucp_am_bw UCX_TLS={tls}")
        result["ucx_perftest"][tls] = {str(s): perftest(tls, s, args.bytes_per_size) for s in args.sizes}

    log("redis through hiredis")
    rrows, err = redis_run(binary, args)
    result["redis"] = {"rows": rrows, "error": err}

    for tls in TLS_SETS:
        if not os.access(kvtcd, os.X_OK):
            result["kvtc"][tls] = {"rows": [], "error": f"{kvtcd} missing"}
            continue
        log(f"kvtcd through libkvtc UCX_TLS={tls}")
        rows, err = kvtcd_run(kvtcd, binary, tls, args)
        result["kvtc"][tls] = {"rows": rows, "error": err}

    # Ratios and the table.
    summary = []
    print(f"\nThroughput, one connection, MiB/s (loopback, {os.cpu_count()} CPUs)")
    print(f"{'UCX_TLS':<12}{'size':>8}{'perftest':>10}{'kvtc put':>10}{'kvtc get':>10}"
          f"{'redis set':>10}{'redis get':>10}{'get/perf':>9}{'put/perf':>9}{'get/redis':>10}{'put/redis':>10}")
    for tls in TLS_SETS:
        krows = result["kvtc"][tls]["rows"]
        for s in args.sizes:
            pt = result["ucx_perftest"][tls].get(str(s))
            k = pick(krows, "throughput", size=s) or {}
            r = pick(rrows, "throughput", size=s) or {}
            row = {"tls": tls, "size": s, "perftest_mib_s": pt and pt["mib_s"],
                   "kvtc_put_mib_s": k.get("put_mib_s"), "kvtc_get_mib_s": k.get("get_mib_s"),
                   "redis_set_mib_s": r.get("put_mib_s"), "redis_get_mib_s": r.get("get_mib_s")}
            row["get_vs_perftest"] = ratio(row["kvtc_get_mib_s"], row["perftest_mib_s"])
            row["put_vs_perftest"] = ratio(row["kvtc_put_mib_s"], row["perftest_mib_s"])
            row["get_vs_redis"] = ratio(row["kvtc_get_mib_s"], row["redis_get_mib_s"])
            row["put_vs_redis"] = ratio(row["kvtc_put_mib_s"], row["redis_set_mib_s"])
            summary.append(row)
            print(f"{tls:<12}{s // 1024:>7}K{fmt(row['perftest_mib_s'], 10)}{fmt(row['kvtc_put_mib_s'], 10)}"
                  f"{fmt(row['kvtc_get_mib_s'], 10)}{fmt(row['redis_set_mib_s'], 10)}{fmt(row['redis_get_mib_s'], 10)}"
                  f"{fmt(row['get_vs_perftest'], 9, 2)}{fmt(row['put_vs_perftest'], 9, 2)}"
                  f"{fmt(row['get_vs_redis'], 10, 2)}{fmt(row['put_vs_redis'], 10, 2)}")
    result["throughput_summary"] = summary

    lat = []
    print(f"\nSingle-chunk get latency, {args.lat_size // 1024} KiB chunks, one connection per client (us)")
    print(f"{'system':<18}{'clients':>8}{'P50':>10}{'P99':>10}{'P99/P50':>9}{'MiB/s':>10}")
    systems = [("redis", rrows)] + [(f"kvtc {tls}", result["kvtc"][tls]["rows"]) for tls in TLS_SETS]
    for name, rows in systems:
        for c in args.clients:
            r = pick(rows, "latency", clients=c)
            if not r:
                print(f"{name:<18}{c:>8}{'-':>10}{'-':>10}{'-':>9}{'-':>10}")
                continue
            q = ratio(r["p99_us"], r["p50_us"])
            lat.append({"system": name, "clients": c, "p50_us": r["p50_us"], "p99_us": r["p99_us"],
                        "p99_over_p50": q, "mib_s": r["mib_s"]})
            print(f"{name:<18}{c:>8}{fmt(r['p50_us'], 10, 1)}{fmt(r['p99_us'], 10, 1)}{fmt(q, 9, 2)}{fmt(r['mib_s'], 10)}")
    result["latency_summary"] = lat

    # The issue's aims, judged on what this run measured.
    aims = {}
    big = [r for r in summary if r["size"] >= 4 * MIB and r["get_vs_perftest"] is not None]
    if big:
        aims["get_ge_90pct_perftest_ge_4MiB"] = all(r["get_vs_perftest"] >= 0.9 for r in big)
        aims["put_ge_90pct_perftest_ge_4MiB"] = all((r["put_vs_perftest"] or 0) >= 0.9 for r in big)
    vs_redis = [r for r in summary if r["get_vs_redis"] is not None]
    if vs_redis:
        aims["ge_3x_redis"] = all(r["get_vs_redis"] >= 3 and (r["put_vs_redis"] or 0) >= 3 for r in vs_redis)
    l16 = [l for l in lat if l["system"].startswith("kvtc") and l["clients"] == 16]
    if l16:
        aims["p99_lt_2x_p50_at_16"] = all(l["p99_over_p50"] < 2 for l in l16)
    result["aims"] = aims
    print("\nAims:", json.dumps(aims) if aims else "not judged (kvtc results missing)")
    for tls in TLS_SETS:
        if result["kvtc"][tls]["error"]:
            print(f"kvtc {tls}: {result['kvtc'][tls]['error']}")
    if err:
        print(f"redis: {err}")

    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
