#!/usr/bin/env python3
"""Transport benchmark driver: kvtcd against its physical limit and against
what users pick today, in one run on loopback.

  (a) ucx_perftest ucp_am_bw, server + client process, per UCX_TLS set
  (b) redis-server (no persistence) through hiredis: SET/GET of the same values
  (c) kvtcd through libkvtc, twice: bulk bytes as UCX payloads (tcp/lo: UCX
      gives sockaddr endpoints with peer error handling nothing else) and by
      the same-host local path (protocol 1.3, process_vm_readv/writev): put/get
      throughput per chunk size and P50/P99 of single-chunk gets with 1, 16
      and 64 concurrent clients
  (d) the floor under the latency: the same single-chunk gets as one memcpy
      each from values in the bench's own process (no request, no daemon):
      the tail the host's memory and scheduler give any same-host store

Prints a table and writes bench/results/transport.json. The C program
kvtc_bench_transport does (b), (c) and (d) with the identical workload.

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
import urllib.request

MIB = 1 << 20
SIZES = [256 << 10, 1 << 20, 4 << 20, 8 << 20, 16 << 20, 32 << 20]
TLS_SETS = ["tcp,sm,self", "tcp"]
# kvtc's two data paths, one daemon (UCX_TLS=tcp): the client chooses.
# KVTC_BENCH_LOCAL=on makes bt_kvtc fail rather than silently use UCX.
# "base": the local path of a second daemon (--kvtcd-base, e.g. the build
# before a change), measured in the same rounds for a same-run baseline.
# "shm": the local path into and out of buffers shared with kvtcd
# (kvtc_mem_alloc; KVTC_BENCH_SHM=on makes bt_kvtc fail if kvtcd does not
# take them), same daemon as "local".
KVTC_MODES = {"tcp": "off", "local": "on", "shm": "on", "base": "on"}
# What each kvtc path is judged against: its own physical limit.
LIMIT_OF = {"tcp": "tcp", "local": "tcp,sm,self", "shm": "tcp,sm,self", "base": "tcp,sm,self"}
# Requests in flight on the throughput connection: 1 = one blocking call
# after another; 4 = a sliding window of 4 (a new request as soon as one
# finishes, as ucx_perftest keeps its window of sends).
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
    def __init__(self, kvtcd, tls, host_mem, extra_args=(), extra_env=None):
        self.env = ucx_env(tls)
        self.tmp = tempfile.TemporaryDirectory(prefix="kvtc-bt-")
        pf = os.path.join(self.tmp.name, "ports")
        self.logf = open(os.path.join(self.tmp.name, "kvtcd.log"), "w+")
        # extra_env reaches the daemon only (its clients keep self.env).
        denv = dict(self.env, **(extra_env or {}))
        self.proc = subprocess.Popen([kvtcd, "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0",
                                      "--host-mem", host_mem, "--data-dir", self.tmp.name, "--port-file", pf]
                                     + list(extra_args),
                                     env=denv, stdout=self.logf, stderr=subprocess.STDOUT)
        self.target, self.error, self.admin = None, None, None
        end = time.time() + 15
        while time.time() < end and self.proc.poll() is None:
            try:
                with open(pf) as f:
                    parts = f.read().split()
                if len(parts) >= 2:
                    self.target = f"127.0.0.1:{int(parts[0])}"
                    self.admin = int(parts[1])
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

    def metrics(self, prefix):
        """The daemon's unlabelled series starting with prefix from
        /metrics, or None."""
        if not self.admin or self.proc.poll() is not None:
            return None
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.admin}/metrics", timeout=5) as r:
                text = r.read().decode()
        except OSError:
            return None
        out = {}
        for line in text.splitlines():
            f = line.split()
            if len(f) == 2 and f[0].startswith(prefix):
                out[f[0]] = float(f[1])
        return out

    def local_metrics(self):
        """The daemon's kvtc_local_* series (where its copies ran), or None."""
        return self.metrics("kvtc_local_")

    def cpu(self):
        """(loop thread, whole daemon) CPU seconds so far, or None."""
        m = self.metrics("kvtc_") or {}
        if "kvtc_loop_cpu_seconds_total" not in m:
            return None
        return m["kvtc_loop_cpu_seconds_total"], m.get("kvtc_process_cpu_seconds_total")

    def stop(self):
        """Stop the daemon; returns its "local path listening" log line (how
        its copies were set up), or None."""
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.logf.seek(0)
        line = next((l.strip() for l in self.logf if "local path listening" in l), None)
        self.logf.close()
        self.tmp.cleanup()
        return line


def median(vals):
    vals = sorted(vals)
    n = len(vals)
    return vals[n // 2] if n % 2 else (vals[n // 2 - 1] + vals[n // 2]) / 2


def med(rows_list, keys):
    """Median over the rounds of one point, each key on its own."""
    rows_list = [r for r in rows_list if r]
    if not rows_list:
        return None
    out = dict(rows_list[0])
    for k in keys:
        vals = [r[k] for r in rows_list if k in r]
        if vals:
            out[k] = median(vals)
            out[k + "_rounds"] = vals
    out["runs"] = len(rows_list)
    return out


def add_cpu(row, c0, c1, nbytes):
    """kvtcd's CPU seconds per GB moved (puts + gets) over one bench run:
    its loop thread's (every UCX transfer and tcp copy runs there) and the
    whole daemon's."""
    if not row or not c0 or not c1:
        return
    gb = nbytes / 1e9
    row["kvtcd_loop_cpu_s_per_gb"] = round((c1[0] - c0[0]) / gb, 4)
    if c0[1] is not None and c1[1] is not None:
        row["kvtcd_cpu_s_per_gb"] = round((c1[1] - c0[1]) / gb, 4)


def pick(rows, test, **kw):
    for r in rows:
        if r.get("test") == test and all(r.get(k) == v for k, v in kw.items()):
            return r
    return None


def ratio(a, b):
    return round(a / b, 3) if a and b else None


def fmt(v, w=9, p=0):
    return f"{v:>{w}.{p}f}" if isinstance(v, (int, float)) else f"{'-':>{w}}"


def modes_of(result):
    return list(result["kvtc"])


def limit_of(result, mode):
    """A path's physical limit; a variant's is tcp's when its client was
    kept off the local path (client.KVTC_BENCH_LOCAL=off), else the local
    path's."""
    if mode in LIMIT_OF:
        return LIMIT_OF[mode]
    spec = result.get("kvtcd", {}).get("variants", {}).get(mode, {})
    return "tcp" if spec.get("cenv", {}).get("KVTC_BENCH_LOCAL") == "off" else "tcp,sm,self"


def report(result):
    """Tables, ratios and the issue's aims from a result (fresh or --render)."""
    summary = []
    pt = result["ucx_perftest"]
    modes = modes_of(result)
    # Ratio columns for the local-path modes: get and put against perftest
    # sm and against Redis.
    lmodes = [m for m in modes if limit_of(result, m) != "tcp"]
    short = {m: {"tcp": "tcp", "local": "loc"}.get(m, m[:4]) for m in modes}
    for dep in result["depths"]:
        what = "one request at a time" if dep == 1 else f"{dep} requests in flight"
        print(f"\nThroughput, one connection, {what} (depth {dep}), MiB/s, medians of "
              f"{result.get('rounds')} rounds (loopback, {result.get('cpus')} CPUs)")
        head = f"{'size':>6}{'pt tcp':>8}{'pt sm':>8}"
        for m in modes:
            head += f"{short[m] + ' put':>9}{short[m] + ' get':>9}"
        head += f"{'rd set':>8}{'rd get':>8}"
        for m in lmodes:
            l = short[m][0]
            head += f"{l + 'get/sm':>9}{l + 'get/rd':>9}{l + 'put/rd':>9}"
        print(head)
        for s in result["sizes"]:
            row = {"size": s, "depth": dep}
            for tls in TLS_SETS:
                ptr = pt.get(tls, {}).get(str(s))
                row[f"perftest_{tls}_mib_s"] = ptr and ptr["mib_s"]
            for mode in modes:
                k = pick(result["kvtc"][mode]["rows"], "throughput", size=s, depth=dep) or {}
                row[f"kvtc_{mode}_put_mib_s"] = k.get("put_mib_s")
                row[f"kvtc_{mode}_get_mib_s"] = k.get("get_mib_s")
                lim = row[f"perftest_{limit_of(result, mode)}_mib_s"]
                row[f"{mode}_get_vs_perftest"] = ratio(k.get("get_mib_s"), lim)
                row[f"{mode}_put_vs_perftest"] = ratio(k.get("put_mib_s"), lim)
            r = pick(result["redis"]["rows"], "throughput", size=s, depth=dep) or {}
            row["redis_set_mib_s"], row["redis_get_mib_s"] = r.get("put_mib_s"), r.get("get_mib_s")
            for mode in modes:
                row[f"{mode}_get_vs_redis"] = ratio(row[f"kvtc_{mode}_get_mib_s"], row["redis_get_mib_s"])
                row[f"{mode}_put_vs_redis"] = ratio(row[f"kvtc_{mode}_put_mib_s"], row["redis_set_mib_s"])
            summary.append(row)
            line = f"{s // 1024:>5}K{fmt(row['perftest_tcp_mib_s'], 8)}{fmt(row['perftest_tcp,sm,self_mib_s'], 8)}"
            for m in modes:
                line += f"{fmt(row[f'kvtc_{m}_put_mib_s'], 9)}{fmt(row[f'kvtc_{m}_get_mib_s'], 9)}"
            line += f"{fmt(row['redis_set_mib_s'], 8)}{fmt(row['redis_get_mib_s'], 8)}"
            for m in lmodes:
                line += (f"{fmt(row[f'{m}_get_vs_perftest'], 9, 2)}{fmt(row[f'{m}_get_vs_redis'], 9, 2)}"
                         f"{fmt(row[f'{m}_put_vs_redis'], 9, 2)}")
            print(line)
    result["throughput_summary"] = summary

    # Where kvtcd's CPU went per GB moved (puts + gets of each point): its
    # loop thread runs every UCX transfer, so over tcp it is the bound.
    cpu_rows = [(m, r) for m in modes for r in result["kvtc"][m]["rows"]
                if r.get("test") == "throughput" and r.get("kvtcd_loop_cpu_s_per_gb") is not None]
    if cpu_rows:
        print("\nkvtcd CPU seconds per GB moved (puts + gets), medians of the rounds")
        print(f"{'path':<8}{'size':>7}{'depth':>6}{'loop':>8}{'daemon':>8}")
        for m, r in cpu_rows:
            print(f"{m[:8]:<8}{r['size'] // 1024:>6}K{r['depth']:>6}{fmt(r['kvtcd_loop_cpu_s_per_gb'], 8, 3)}"
                  f"{fmt(r.get('kvtcd_cpu_s_per_gb'), 8, 3)}")

    lat = []
    print(f"\nSingle-chunk get latency, {result['lat_size'] // 1024} KiB chunks, one connection per client "
          f"(us, medians of the rounds' P50 and P99)")
    print(f"{'system':<14}{'clients':>8}{'P50':>10}{'P99':>10}{'P99/P50':>9}{'MiB/s':>10}")
    # memcpy: the floor, the same gets as one memcpy each inside the bench
    systems = [("memcpy floor", result.get("memcpy", {}).get("rows", [])),
               ("redis", result["redis"]["rows"])] + \
              [(f"kvtc {m}", result["kvtc"][m]["rows"]) for m in modes]
    for name, rows in systems:
        for c in result["clients"]:
            r = pick(rows, "latency", clients=c)
            if not r:
                print(f"{name:<14}{c:>8}{'-':>10}{'-':>10}{'-':>9}{'-':>10}")
                continue
            q = ratio(r["p99_us"], r["p50_us"])
            # each round's own P99/P50 (rounds interleave the systems)
            qr = [ratio(b, a) for a, b in zip(r.get("p50_us_rounds", []), r.get("p99_us_rounds", []))]
            lat.append({"system": name, "clients": c, "p50_us": r["p50_us"], "p99_us": r["p99_us"],
                        "p99_over_p50": q, "p99_over_p50_rounds": qr, "mib_s": r["mib_s"]})
            print(f"{name:<14}{c:>8}{fmt(r['p50_us'], 10, 1)}{fmt(r['p99_us'], 10, 1)}{fmt(q, 9, 2)}"
                  f"{fmt(r['mib_s'], 10)}")
    result["latency_summary"] = lat

    # The aims, per kvtc path, each at its better depth per size,
    # against its own physical limit (tcp: perftest tcp; local: perftest sm).
    aims = {}
    for mode in modes:
        by_size = {}
        for r in summary:
            g = r[f"kvtc_{mode}_get_mib_s"]
            if g is not None and (r["size"] not in by_size or g > by_size[r["size"]][f"kvtc_{mode}_get_mib_s"]):
                by_size[r["size"]] = r
        pts = list(by_size.values())
        big = [r for r in pts if r["size"] >= 4 * MIB and r[f"{mode}_get_vs_perftest"] is not None]
        a = {"limit": f"ucx_perftest {limit_of(result, mode)}"}
        if big:
            a["get_ge_90pct_perftest_ge_4MiB"] = all(r[f"{mode}_get_vs_perftest"] >= 0.9 for r in big)
            a["put_ge_90pct_perftest_ge_4MiB"] = all((r[f"{mode}_put_vs_perftest"] or 0) >= 0.9 for r in big)
            a["get_vs_perftest_ge_4MiB"] = [r[f"{mode}_get_vs_perftest"] for r in big]
            a["put_vs_perftest_ge_4MiB"] = [r[f"{mode}_put_vs_perftest"] for r in big]
        vs = [r for r in pts if r[f"{mode}_get_vs_redis"] is not None]
        if vs:
            a["ge_3x_redis"] = all(r[f"{mode}_get_vs_redis"] >= 3 and (r[f"{mode}_put_vs_redis"] or 0) >= 3
                                   for r in vs)
            a["redis_get_ratio_range"] = [min(r[f"{mode}_get_vs_redis"] for r in vs),
                                          max(r[f"{mode}_get_vs_redis"] for r in vs)]
            a["redis_put_ratio_range"] = [min(r[f"{mode}_put_vs_redis"] or 0 for r in vs),
                                          max(r[f"{mode}_put_vs_redis"] or 0 for r in vs)]
        l16 = [l for l in lat if l["system"] == f"kvtc {mode}" and l["clients"] == 16]
        f16 = [l for l in lat if l["system"] == "memcpy floor" and l["clients"] == 16]
        if l16:
            a["p99_lt_2x_p50_at_16"] = l16[0]["p99_over_p50"] < 2
            a["p99_over_p50_at_16_rounds"] = l16[0]["p99_over_p50_rounds"]
        if l16 and f16:
            # the same 16 gets as memcpy alone, same rounds: the host's own tail
            a["floor_p99_over_p50_at_16"] = f16[0]["p99_over_p50"]
            a["floor_p99_over_p50_at_16_rounds"] = f16[0]["p99_over_p50_rounds"]
        aims[mode] = a
    result["aims"] = aims
    print("\nTransports really used (UCX ep_cfg):")
    for tls, ln in (result.get("lanes") or {}).items():
        print(f"  {tls}: {ln}")
    print("\nAims (per kvtc path, at its better depth):")
    for mode, a in aims.items():
        print(f"  {mode}: {json.dumps(a)}")
    for mode in modes:
        if result["kvtc"][mode].get("error"):
            print(f"kvtc {mode}: {result['kvtc'][mode]['error']}")
    if result["redis"].get("error"):
        print(f"redis: {result['redis']['error']}")
    print(f"load average: start {result.get('loadavg_at_start')}, end {result.get('loadavg_at_end')}, "
          f"per round {result.get('loadavg_per_round')} on {result.get('cpus')} CPUs")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default="build")
    ap.add_argument("--out", default="bench/results/transport.json")
    ap.add_argument("--quick", action="store_true", help="fewer bytes and one round (smoke run)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; each point reports the median")
    ap.add_argument("--lat-size", type=int, default=1 << 20)
    ap.add_argument("--bytes-mib", type=int, help="MiB moved per throughput point (default 1024, --quick 64; "
                    "kvtc's rail connections reach their rate only after some hundred MiB)")
    ap.add_argument("--lat-ops", type=int, help="gets per latency point (default 4096, --quick 1024)")
    ap.add_argument("--host-mem", default="4G")
    ap.add_argument("--sizes", help="chunk sizes to measure, e.g. 256K,1M (default 256K..32M)")
    ap.add_argument("--clients", help="latency client counts (default 1,16,64)")
    ap.add_argument("--depths", help="requests in flight per throughput point (default 1,4)")
    ap.add_argument("--modes", default="tcp,local,shm",
                    help="kvtc paths: tcp (UCX payloads), local (the local path, any buffers), shm (the "
                    "local path, buffers shared with kvtcd); default all three")
    ap.add_argument("--kvtcd-base", metavar="KVTCD", help="a second kvtcd binary (e.g. the build before "
                    "a change): its local path is measured in the same rounds as mode 'base'")
    ap.add_argument("--bench-base", metavar="BENCH", help="the kvtc_bench_transport (i.e. libkvtc) that "
                    "drives mode 'base' (default: the --build one)")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME:ITEM,...",
                    help="one more daemon whose local path is measured in the same rounds as mode NAME; "
                    "items: --flag=value (a kvtcd flag), KEY=VALUE (the daemon's environment), "
                    "client.KEY=VALUE (the bench's, i.e. libkvtc's, environment), "
                    "bin=PATH (another kvtcd), bench=PATH (another kvtc_bench_transport, i.e. "
                    "libkvtc); e.g. w12:--local-copy-threads=12")
    ap.add_argument("--render", metavar="JSON", help="print the tables and aims of an earlier run's JSON "
                    "(recomputing ratios and aims into it) and measure nothing")
    args = ap.parse_args()
    if args.render:
        with open(args.render) as f:
            result = json.load(f)
        if "local" not in result["kvtc"]:
            sys.exit("--render reads runs of this version (kvtc tcp + local); older JSON: see git history")
        rows = [r for v in result["kvtc"].values() for r in v["rows"]] + result["redis"]["rows"]
        result.setdefault("depths", sorted({r["depth"] for r in rows if r.get("test") == "throughput"
                                            and "depth" in r}) or [1])
        result.setdefault("clients", [1, 16, 64])
        report(result)
        with open(args.render, "w") as f:
            json.dump(result, f, indent=1)
        return
    def size_arg(v):
        v = v.strip().upper()
        mult = {"K": 1 << 10, "M": 1 << 20}.get(v[-1:], 1)
        return int(v[:-1] if mult > 1 else v) * mult

    args.sizes = [size_arg(v) for v in args.sizes.split(",")] if args.sizes else SIZES
    args.depths = [int(d) for d in args.depths.split(",")] if args.depths else DEPTHS
    args.clients = [int(c) for c in args.clients.split(",")] if args.clients else [1, 16, 64]
    modes = [m for m in args.modes.split(",") if m]
    if any(m not in ("tcp", "local", "shm") for m in modes):
        sys.exit("--modes takes tcp, local and/or shm")
    if args.kvtcd_base:
        if not os.access(args.kvtcd_base, os.X_OK):
            sys.exit(f"--kvtcd-base {args.kvtcd_base}: not an executable")
        modes.append("base")
    variants = {}
    for v in args.variant:
        name, _, items = v.partition(":")
        if not re.fullmatch(r"[a-z][a-z0-9_]{0,11}", name) or name in modes or name in KVTC_MODES:
            sys.exit(f"--variant {v}: NAME is 1-12 of [a-z0-9_], not tcp/local/base or a repeat")
        spec = {"bin": None, "bench": None, "args": [], "env": {}, "cenv": {}}
        for it in filter(None, items.split(",")):
            if it.startswith("client.") and "=" in it:
                k, _, val = it[7:].partition("=")
                spec["cenv"][k] = val
            elif it.startswith("--"):
                spec["args"] += it.split("=", 1)
            elif it.startswith("bin="):
                spec["bin"] = it[4:]
            elif it.startswith("bench="):
                spec["bench"] = it[6:]
            elif "=" in it:
                k, _, val = it.partition("=")
                spec["env"][k] = val
            else:
                sys.exit(f"--variant {v}: item {it!r} is not --flag=value, KEY=VALUE, client.KEY=VALUE, "
                         "bin=PATH or bench=PATH")
        variants[name] = spec
        modes.append(name)
    args.bytes_per_size = (args.bytes_mib or (64 if args.quick else 1024)) * MIB
    args.lat_ops = args.lat_ops or (1024 if args.quick else 4096)
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
              "rounds": args.rounds, "method": "per size, ucx_perftest, kvtcd (UCX payloads, then the local "
              "path) and Redis run back to back in each round; every point is the median of the rounds "
              "(latency: median P50 and median P99)",
              "ucx_perftest": {}, "redis": {}, "kvtc": {}}

    # Servers stay up for the whole run; the measurements interleave so that a
    # burst of load on this shared machine hits every system alike.
    redis = Redis()
    daemon = Kvtcd(kvtcd, "tcp", args.host_mem) if os.access(kvtcd, os.X_OK) else None
    base = Kvtcd(args.kvtcd_base, "tcp", args.host_mem) if args.kvtcd_base else None
    extra = {n: Kvtcd(sp["bin"] or kvtcd, "tcp", args.host_mem, sp["args"], sp["env"])
             for n, sp in variants.items()}
    daemon_of = {m: base if m == "base" else extra.get(m, daemon) for m in modes}
    bench_of = {m: (args.bench_base if m == "base" else variants.get(m, {}).get("bench")) or binary
                for m in modes}
    for m, b in bench_of.items():
        if not os.access(b, os.X_OK):
            sys.exit(f"mode {m}: bench {b} is not an executable")
    envs = {m: {**daemon_of[m].env, "KVTC_BENCH_LOCAL": KVTC_MODES.get(m, "on"),
                "KVTC_BENCH_SHM": "on" if m == "shm" else "off",
                **variants.get(m, {}).get("cenv", {})} if daemon_of[m] else None
            for m in modes}
    result["kvtcd"] = {"binary": kvtcd, "base": args.kvtcd_base, "variants": variants, "bench_of": bench_of,
                       "knobs": {k: v for k, v in os.environ.items() if k.startswith("KVTCD_")}}
    result["lanes"] = {}
    for tls in TLS_SETS:
        p = perftest(tls, 1 << 20, 64 * MIB, info=True)
        result["lanes"][f"ucx_perftest {tls}"] = p and p.get("lanes")
    result["lanes"]["kvtc (UCX endpoint)"] = daemon.probe_lanes(binary) if daemon else None
    result["lanes"]["kvtc local"] = "process_vm_readv/writev (bulk); the UCX endpoint above for control"
    result["lanes"]["kvtc shm"] = "memcpy in kvtcd into/out of memfd buffers the client shares (bulk); " \
                                  "the UCX endpoint above for control"
    log(f"  lanes: {result['lanes']}")
    pt = {tls: {s: [] for s in args.sizes} for tls in TLS_SETS}
    kv = {m: {(s, d): [] for s in args.sizes for d in args.depths} for m in modes}
    rd = {(s, d): [] for s in args.sizes for d in args.depths}
    lat = {name: {c: [] for c in args.clients}
           for name in ["memcpy", "redis"] + [f"kvtc {m}" for m in modes]}
    errors = {m: None for m in modes}
    try:
        for rnd in range(args.rounds):
            result.setdefault("loadavg_per_round", []).append(os.getloadavg()[0])
            log(f"round {rnd + 1}/{args.rounds} (load {os.getloadavg()[0]:.1f})")
            for size in args.sizes:
                log(f"  {size // 1024} KiB")
                for tls in TLS_SETS:
                    pt[tls][size].append(perftest(tls, size, args.bytes_per_size))
                for dep in args.depths:
                    for m in modes:
                        dm = daemon_of[m]
                        if dm and dm.target:
                            c0 = dm.cpu()
                            rows = run_bench(bench_of[m], "kvtc", dm.target, envs[m], args, sizes=[size],
                                             depth=dep)
                            if rows is None:
                                errors[m] = "bench failed (see stderr)"
                            row = pick(rows or [], "throughput", size=size)
                            add_cpu(row, c0, dm.cpu(), 2 * args.bytes_per_size)
                            kv[m][(size, dep)].append(row)
                    if redis.target:
                        rows = run_bench(binary, "redis", redis.target, redis.env, args, sizes=[size], depth=dep)
                        rd[(size, dep)].append(pick(rows or [], "throughput", size=size))
            log("  latency")
            systems = [("memcpy", "memcpy", "-", dict(os.environ), binary),
                       ("redis", "redis", redis.target, redis.env, binary)] + \
                      [(f"kvtc {m}", "kvtc", daemon_of[m] and daemon_of[m].target, envs[m], bench_of[m])
                       for m in modes]
            for name, be, target, env, bench in systems:
                if target:
                    rows = run_bench(bench, be, target, env, args, latency=True)
                    for c in args.clients:
                        lat[name][c].append(pick(rows or [], "latency", clients=c))
    finally:
        redis.stop()
        for dm, key in [(daemon, "log_local"), (base, "base_log_local")] + \
                       [(d, f"{n}_log_local") for n, d in extra.items()]:
            if dm:
                result["kvtcd"][key.replace("log_local", "metrics")] = dm.local_metrics()
                result["kvtcd"][key] = dm.stop()

    thr_keys = ["put_mib_s", "get_mib_s", "put_p50_us", "put_p99_us", "get_p50_us", "get_p99_us",
                "kvtcd_loop_cpu_s_per_gb", "kvtcd_cpu_s_per_gb"]
    lat_keys = ["p50_us", "p99_us", "mib_s"]
    for tls in TLS_SETS:
        result["ucx_perftest"][tls] = {str(s): med(pt[tls][s], ["mib_s", "lat_us"]) for s in args.sizes}
    for m in modes:
        dm = daemon_of[m]
        result["kvtc"][m] = {
            "rows": [r for r in [med(kv[m][(s, dep)], thr_keys) for s in args.sizes for dep in args.depths] if r] +
                    [r for r in [med(lat[f"kvtc {m}"][c], lat_keys) for c in args.clients] if r],
            "error": (dm.error if dm else f"{kvtcd} missing") or errors[m]}
    rrows = [r for r in [med(rd[(s, dep)], thr_keys) for s in args.sizes for dep in args.depths] if r] + \
            [r for r in [med(lat["redis"][c], lat_keys) for c in args.clients] if r]
    result["redis"] = {"rows": rrows, "error": redis.error}
    result["memcpy"] = {"rows": [r for r in [med(lat["memcpy"][c], lat_keys) for c in args.clients] if r]}

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
