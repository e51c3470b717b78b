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
import re
import socket
import subprocess
import sys
import tempfile
import time

MIB = 1 << 20
SIZES = [256 << 10, 1 << 20, 4 << 20, 8 << 20, 16 << 20, 32 << 20]
TLS_SETS = ["tcp,sm,self", "tcp"]
# Requests in flight on the throughput connection: 1 = one blocking call
# after another; 4 = pipelined (ucx_perftest keeps a window of sends too).
DEPTHS = [1, 4]


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


def lanes(stderr):
    """The endpoint configuration UCX reports at UCX_LOG_LEVEL=info (the
    transports a connection really uses), or None."""
    found = re.findall(r"ep_cfg\[\d+\]: (.*)", stderr)
    return found[-1].strip() if found else None


def perftest(tls, size, total_bytes, info=False):
    """ucp_am_bw of one size; returns overall bandwidth in MiB/s or None.
    info: also report the lanes the client's endpoint used."""
    iters = max(20, min(20000, total_bytes // size))
    warm = max(4, iters // 10)
    env = ucx_env(tls)
    if info:
        env["UCX_LOG_LEVEL"] = "info"
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
                res = {"iters": iters, "mib_s": float(f[5]), "lat_us": float(f[3])}
                if info:
                    res["lanes"] = lanes(out.stderr + out.stdout)
                return res
            log(f"ucx_perftest {tls} {size}: rc={out.returncode} {out.stderr.strip()[-300:]}")
        finally:
            srv.kill()
            srv.wait()
    return None


def run_bench(binary, backend, target, env, args, sizes=None, latency=False, depth=1):
    """One invocation of the C program; returns its JSON rows (or None on failure)."""
    cmd = [binary, "--backend", backend, "--target", target, "--depth", str(depth),
           "--bytes-per-size", str(args.bytes_per_size),
           "--lat-size", str(args.lat_size), "--clients", ",".join(str(c) for c in args.clients),
           "--lat-ops", str(args.lat_ops)]
    cmd += ["--sizes", ",".join(str(s) for s in sizes)] if sizes else ["--no-throughput"]
    if not latency:
        cmd.append("--no-latency")
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    rows = [json.loads(l) for l in out.stdout.splitlines() if l.startswith("{")]
    if out.returncode != 0:
        log(f"  {backend} bench failed (rc={out.returncode}): {out.stderr.strip()[-800:]}")
        return None
    return rows


class Redis:
    def __init__(self):
        self.port = free_port()
        self.proc = subprocess.Popen(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                                      "--save", "", "--appendonly", "no", "--protected-mode", "no",
                                      "--daemonize", "no", "--loglevel", "warning"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.target = f"127.0.0.1:{self.port}" if wait_port(self.port) else None
        self.env = dict(os.environ)
        self.error = None if self.target else "redis-server did not start"

    def stop(self):
        self.proc.terminate()
        self.proc.wait()


class Kvtcd:
    def __init__(self, kvtcd, tls, host_mem):
        self.env = ucx_env(tls)
        self.tmp = tempfile.TemporaryDirectory(prefix="kvtc-bt-")
        pf = os.path.join(self.tmp.name, "ports")
        self.logf = open(os.path.join(self.tmp.name, "kvtcd.log"), "w+")
        self.proc = subprocess.Popen([kvtcd, "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0",
                                      "--host-mem", host_mem, "--data-dir", self.tmp.name, "--port-file", pf],
                                     env=self.env, stdout=self.logf, stderr=subprocess.STDOUT)
        self.target, self.error = None, None
        end = time.time() + 15
        while time.time() < end and self.proc.poll() is None:
            try:
                with open(pf) as f:
                    parts = f.read().split()
                if len(parts) >= 2:
                    self.target = f"127.0.0.1:{int(parts[0])}"
                    break
            except (OSError, ValueError):
                pass
            time.sleep(0.05)
        if not self.target:
            self.logf.seek(0)
            self.error = "kvtcd did not start: " + self.logf.read()[-500:]
        self.lanes = None

    def probe_lanes(self, binary):
        """The transports a libkvtc connection to this daemon really uses."""
        if not self.target:
            return None
        env = dict(self.env, UCX_LOG_LEVEL="info")
        out = subprocess.run([binary, "--backend", "kvtc", "--target", self.target, "--sizes", "65536",
                              "--bytes-per-size", "65536", "--no-latency"],
                             env=env, capture_output=True, text=True, timeout=60)
        self.lanes = lanes(out.stderr + out.stdout)
        return self.lanes

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.logf.close()
        self.tmp.cleanup()


def best(rows_list, keys):
    """Best of several runs of one point: highest throughput, lowest latency."""
    rows_list = [r for r in rows_list if r]
    if not rows_list:
        return None
    out = dict(rows_list[0])
    for k in keys:
        vals = [r[k] for r in rows_list if k in r]
        if vals:
            out[k] = min(vals) if k.endswith("_us") else max(vals)
    out["runs"] = len(rows_list)
    return out


def best_row(rows_list):
    """Latency: the whole round with the lowest P99, so P50 and P99 stay a pair."""
    rows_list = [r for r in rows_list if r]
    if not rows_list:
        return None
    out = dict(min(rows_list, key=lambda r: r["p99_us"]))
    out["runs"] = len(rows_list)
    return out


def pick(rows, test, **kw):
    for r in rows:
        if r.get("test") == test and all(r.get(k) == v for k, v in kw.items()):
            return r
    return None


def ratio(a, b):
    return round(a / b, 3) if a and b else None


def fmt(v, w=9, p=0):
    return f"{v:>{w}.{p}f}" if isinstance(v, (int, float)) else f"{'-':>{w}}"


def report(result):
    """Tables, ratios and the issue's aims from a result (fresh or --render)."""
    # Ratios and the table.
    summary = []
    for dep in result["depths"]:
        what = "one request at a time" if dep == 1 else f"{dep} requests in flight"
        print(f"\nThroughput, one connection, {what} (depth {dep}), MiB/s (loopback, {result.get('cpus')} CPUs)")
        print(f"{'UCX_TLS':<12}{'size':>8}{'perftest':>10}{'kvtc put':>10}{'kvtc get':>10}"
              f"{'redis set':>10}{'redis get':>10}{'get/perf':>9}{'put/perf':>9}{'get/redis':>10}{'put/redis':>10}")
        for tls in TLS_SETS:
            krows = result["kvtc"][tls]["rows"]
            for s in result["sizes"]:
                ptr = result["ucx_perftest"][tls].get(str(s))
                k = pick(krows, "throughput", size=s, depth=dep) or {}
                r = pick(result["redis"]["rows"], "throughput", size=s, depth=dep) or {}
                row = {"tls": tls, "size": s, "depth": dep, "perftest_mib_s": ptr and ptr["mib_s"],
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
    print(f"\nSingle-chunk get latency, {result['lat_size'] // 1024} KiB chunks, one connection per client (us)")
    print(f"{'system':<18}{'clients':>8}{'P50':>10}{'P99':>10}{'P99/P50':>9}{'MiB/s':>10}")
    systems = [("redis", result["redis"]["rows"])] + [(f"kvtc {tls}", result["kvtc"][tls]["rows"]) for tls in TLS_SETS]
    for name, rows in systems:
        for c in result["clients"]:
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
    # Each (transport, size) at the depth where kvtc did best.
    by_point = {}
    for r in summary:
        key = (r["tls"], r["size"])
        if r["get_vs_perftest"] is not None and (key not in by_point or
                                                 r["kvtc_get_mib_s"] > by_point[key]["kvtc_get_mib_s"]):
            by_point[key] = r
    # Per transport set: the like-for-like one is where both sides run on
    # the same lanes (see "Transports really used").
    for tls in TLS_SETS:
        pts = [r for (t, _), r in by_point.items() if t == tls]
        big = [r for r in pts if r["size"] >= 4 * MIB]
        a = {}
        if big:
            a["get_ge_90pct_perftest_ge_4MiB"] = all(r["get_vs_perftest"] >= 0.9 for r in big)
            a["put_ge_90pct_perftest_ge_4MiB"] = all((r["put_vs_perftest"] or 0) >= 0.9 for r in big)
        vs_redis = [r for r in pts if r["get_vs_redis"] is not None]
        if vs_redis:
            a["ge_3x_redis"] = all(r["get_vs_redis"] >= 3 and (r["put_vs_redis"] or 0) >= 3 for r in vs_redis)
            a["redis_get_ratio_range"] = [min(r["get_vs_redis"] for r in vs_redis),
                                          max(r["get_vs_redis"] for r in vs_redis)]
            a["redis_put_ratio_range"] = [min(r["put_vs_redis"] or 0 for r in vs_redis),
                                          max(r["put_vs_redis"] or 0 for r in vs_redis)]
        l16 = [l for l in lat if l["system"] == f"kvtc {tls}" and l["clients"] == 16]
        if l16:
            a["p99_lt_2x_p50_at_16"] = l16[0]["p99_over_p50"] < 2
        ln = result.get("lanes", {}).get(tls) or {}
        a["same_lanes_as_perftest"] = bool(ln.get("kvtc")) and ln.get("kvtc") == ln.get("ucx_perftest")
        aims[tls] = a
    result["aims"] = aims
    print("\nTransports really used (UCX ep_cfg):")
    for tls in TLS_SETS:
        ln = result.get("lanes", {}).get(tls) or {"ucx_perftest": None, "kvtc": None}
        print(f"  UCX_TLS={tls}: ucx_perftest {ln['ucx_perftest']}; kvtc {ln['kvtc']}")
    print("\nAims (per UCX_TLS set; kvtc at its better depth):")
    for tls, a in aims.items():
        print(f"  {tls}: {json.dumps(a)}")
    for tls in TLS_SETS:
        if result["kvtc"][tls]["error"]:
            print(f"kvtc {tls}: {result['kvtc'][tls]['error']}")
    if result["redis"].get("error"):
        print(f"redis: {result['redis']['error']}")
    print(f"load average: start {result.get('loadavg_at_start')}, end {result.get('loadavg_at_end')}, "
          f"per round {result.get('loadavg_per_round')} on {result.get('cpus')} CPUs")



def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default="build")
    ap.add_argument("--out", default="bench/results/transport.json")
    ap.add_argument("--quick", action="store_true", help="fewer bytes and one round (smoke run)")
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds; each point keeps its best")
    ap.add_argument("--lat-size", type=int, default=1 << 20)
    ap.add_argument("--host-mem", default="4G")
    ap.add_argument("--render", metavar="JSON", help="print the tables and aims of an earlier run's JSON "
                    "(recomputing ratios and aims into it) and measure nothing")
    args = ap.parse_args()
    if args.render:
        with open(args.render) as f:
            result = json.load(f)
        rows = [r for v in result["kvtc"].values() for r in v["rows"]] + result["redis"]["rows"]
        result.setdefault("depths", sorted({r["depth"] for r in rows if r.get("test") == "throughput"
                                            and "depth" in r}) or [1])
        result.setdefault("clients", [1, 16, 64])
        report(result)
        with open(args.render, "w") as f:
            json.dump(result, f, indent=1)
        return
    args.sizes = SIZES
    args.depths = DEPTHS
    args.clients = [1, 16, 64]
    args.bytes_per_size = (64 if args.quick else 256) * MIB
    args.lat_ops = 1024 if args.quick else 4096
    if args.quick:
        args.rounds = 1

    binary = os.path.join(args.build, "bin", "kvtc_bench_transport")
    kvtcd = os.path.join(args.build, "bin", "kvtcd")
    if not os.access(binary, os.X_OK):
        sys.exit(f"missing {binary}: run make bench first")

    try:
        load = os.getloadavg()
    except OSError:
        load = None
    result = {"host": platform.node(), "cpus": os.cpu_count(),
              "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "loadavg_at_start": load, "nice": os.nice(0),
              "sizes": args.sizes, "depths": args.depths, "clients": args.clients,
              "lat_size": args.lat_size, "bytes_per_size": args.bytes_per_size,
              "rounds": args.rounds, "method": "per size, ucx_perftest, kvtcd and Redis run back to back "
              "in each round; every point keeps its best round (highest MiB/s, lowest latency)",
              "ucx_perftest": {}, "redis": {}, "kvtc": {}}

    # Servers stay up for the whole run; the measurements interleave so that a
    # burst of load on this shared machine hits every system alike.
    redis = Redis()
    daemons = {}
    for tls in TLS_SETS:
        daemons[tls] = Kvtcd(kvtcd, tls, args.host_mem) if os.access(kvtcd, os.X_OK) else None
    result["lanes"] = {}
    for tls in TLS_SETS:
        # What each side really runs on: client/server (sockaddr) endpoints
        # and ucx_perftest's address-exchange endpoints may differ.
        p = perftest(tls, 1 << 20, 64 * MIB, info=True)
        d = daemons[tls]
        result["lanes"][tls] = {"ucx_perftest": p and p.get("lanes"),
                                "kvtc": d.probe_lanes(binary) if d else None}
        log(f"  lanes {tls}: perftest {result['lanes'][tls]['ucx_perftest']}; "
            f"kvtc {result['lanes'][tls]['kvtc']}")
    pt = {tls: {s: [] for s in args.sizes} for tls in TLS_SETS}
    kv = {tls: {(s, d): [] for s in args.sizes for d in args.depths} for tls in TLS_SETS}
    rd = {(s, d): [] for s in args.sizes for d in args.depths}
    lat = {name: {c: [] for c in args.clients} for name in ["redis"] + [f"kvtc {t}" for t in TLS_SETS]}
    try:
        for rnd in range(args.rounds):
            result.setdefault("loadavg_per_round", []).append(os.getloadavg()[0])
            log(f"round {rnd + 1}/{args.rounds} (load {os.getloadavg()[0]:.1f})")
            for size in args.sizes:
                log(f"  {size // 1024} KiB")
                for tls in TLS_SETS:
                    pt[tls][size].append(perftest(tls, size, args.bytes_per_size))
                    d = daemons[tls]
                    for dep in args.depths:
                        if d and d.target:
                            rows = run_bench(binary, "kvtc", d.target, d.env, args, sizes=[size], depth=dep)
                            kv[tls][(size, dep)].append(pick(rows or [], "throughput", size=size))
                for dep in args.depths:
                    if redis.target:
                        rows = run_bench(binary, "redis", redis.target, redis.env, args, sizes=[size], depth=dep)
                        rd[(size, dep)].append(pick(rows or [], "throughput", size=size))
            log("  latency")
            systems = [("redis", redis)] + [(f"kvtc {t}", daemons[t]) for t in TLS_SETS]
            for name, srv in systems:
                if srv and srv.target:
                    rows = run_bench(binary, name.split()[0], srv.target, srv.env, args, latency=True)
                    for c in args.clients:
                        lat[name][c].append(pick(rows or [], "latency", clients=c))
    finally:
        redis.stop()
        for d in daemons.values():
            if d:
                d.stop()

    thr_keys = ["put_mib_s", "get_mib_s", "put_p50_us", "put_p99_us", "get_p50_us", "get_p99_us"]
    for tls in TLS_SETS:
        result["ucx_perftest"][tls] = {str(s): best(pt[tls][s], ["mib_s", "lat_us"]) for s in args.sizes}
        d = daemons[tls]
        result["kvtc"][tls] = {
            "rows": [r for r in [best(kv[tls][(s, dep)], thr_keys) for s in args.sizes for dep in args.depths] if r] +
                    [r for r in [best_row(lat[f"kvtc {tls}"][c]) for c in args.clients] if r],
            "error": (d.error if d else f"{kvtcd} missing")}
    rrows = [r for r in [best(rd[(s, dep)], thr_keys) for s in args.sizes for dep in args.depths] if r] + \
            [r for r in [best_row(lat["redis"][c]) for c in args.clients] if r]
    err = redis.error
    result["redis"] = {"rows": rrows, "error": err}

    try:
        result["loadavg_at_end"] = os.getloadavg()
    except OSError:
        pass
    report(result)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {args.out}")




if __name__ == "__main__":
    main()
