#!/usr/bin/env python3
"""Where a local-path request's time goes: join kvtcd's KVTCD_LOCAL_TRACE
file with libkvtc's KVTC_TRACE files (both CLOCK_MONOTONIC ns) by session
and request id, and print per-stage percentiles.

usage: trace_join.py DAEMON.csv CLIENT_PREFIX [--json OUT] [--label L]

Stages (us), in order:
  c.sub->d.am     client submitted -> kvtcd's AM callback ran (the request on
                  the wire, plus the loop waking up if it slept)
  d.wake->am      the loop's progress round began -> this request's callback
  d.am->start     decoded, looked up, room reserved
  d.start->queue  waited for the end of the batch (small copies)
  d.queue->run0   waited for a copy worker (0 when run on the loop)
  d.run0->run1    the copy itself (and the hash)
  d.run1->done    the loop noticed the finished copy
  d.done->reply   the reply built and handed to UCX
  d.reply->c.rep  the reply on the wire, plus the client noticing it
  c.rep->done     the client finishing the op (checksum, if it checks)
  c.total         submit -> completion, as the client saw it
"""
import csv
import glob
import json
import sys


def pct(v, q):
    if not v:
        return float("nan")
    v = sorted(v)
    return v[min(len(v) - 1, int(q * len(v)))]


def main():
    args = sys.argv[1:]
    out = None
    label = ""
    if "--json" in args:
        i = args.index("--json")
        out = args[i + 1]
        del args[i:i + 2]
    if "--label" in args:
        i = args.index("--label")
        label = args[i + 1]
        del args[i:i + 2]
    if len(args) != 2:
        sys.exit(__doc__)
    dfile, cprefix = args
    d = {}
    with open(dfile) as f:
        for r in csv.DictReader(f):
            d[(int(r["sess"]), int(r["req"]))] = {k: int(v) for k, v in r.items()}
    c = {}
    for fn in glob.glob(cprefix + ".*.csv"):
        with open(fn) as f:
            for r in csv.DictReader(f):
                c[(int(r["sess"]), int(r["req"]))] = {k: int(v) for k, v in r.items()}
    groups = {}
    for key, x in d.items():
        y = c.get(key)
        g = ("put" if x["put"] else "get", x["bytes"])
        st = groups.setdefault(g, {"n": 0, "loop": 0, "slept": 0, "busy": [], "s": {}})
        st["n"] += 1
        st["loop"] += x["where"] == 0
        st["slept"] += x["slept"]
        st["busy"].append(x["busy"])

        def add(name, a, b):
            if a and b:
                st["s"].setdefault(name, []).append((b - a) / 1e3)
        if y:
            add("c.sub->d.am", y["sub"], x["am"])
        add("d.wake->am", x["wake"], x["am"])
        add("d.am->start", x["am"], x["start"])
        add("d.start->queue", x["start"], x["queue"])
        add("d.queue->run0", x["queue"], x["run0"])
        add("d.run0->run1", x["run0"], x["run1"])
        add("d.run1->done", x["run1"], x["done"])
        add("d.done->reply", x["done"], x["reply"])
        if y:
            add("d.reply->c.rep", x["reply"], y["rep"])
            add("c.rep->done", y["rep"], y["done"])
            add("c.total", y["sub"], y["done"])
    res = {"label": label, "groups": []}
    for (kind, size), st in sorted(groups.items()):
        if st["n"] < 8:
            continue
        print(f"{label} {kind} {size >> 10} KiB: {st['n']} copies, {st['loop']} on the loop, "
              f"{st['slept']} after the loop slept, workers busy at hand-over p50 "
              f"{pct(st['busy'], 0.5)} p99 {pct(st['busy'], 0.99)}")
        print(f"  {'stage':16} {'p10':>8} {'p50':>8} {'p90':>8} {'p99':>8}  (us)")
        g = {"kind": kind, "bytes": size, "n": st["n"], "on_loop": st["loop"],
             "slept": st["slept"], "stages": {}}
        for name, v in st["s"].items():
            q = [pct(v, p) for p in (0.1, 0.5, 0.9, 0.99)]
            g["stages"][name] = q
            print(f"  {name:16} " + " ".join(f"{x:8.1f}" for x in q))
        res["groups"].append(g)
    if out:
        with open(out, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
