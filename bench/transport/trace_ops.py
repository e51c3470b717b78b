#!/usr/bin/env python3
"""Where a libkvtc operation's time goes, from the client's trace alone
(KVTC_TRACE=PREFIX, client/trace.c), for operations over UCX: one table
per kind (put, get) and size class, percentiles in microseconds.

  python3 bench/transport/trace_ops.py PREFIX [--min-us N]

Stages: sub->rep (request out, reply header handled: for a rendezvous get
that is the RTS with the reply), rep->bulk (a get's rendezvous receive),
sub->bulk (a put's send done), bulk->done (a get: the checksum of what
landed and the completion; a put: kvtcd's verification and its reply),
total. Gets a rail thread landed (the trace's landed column) are a kind
of their own: their bytes were in before the reply header was handled."""
import csv
import glob
import sys

KINDS = {2: "put", 3: "get"}  # enum kvtc__op_kind (client/internal.h)


def pct(v, q):
    v = sorted(v)
    return v[min(len(v) - 1, int(q * len(v)))] if v else float("nan")


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    rows = []
    for path in glob.glob(sys.argv[1] + ".*.csv"):
        with open(path) as f:
            rows += [r for r in csv.DictReader(f) if r.get("local") == "0"]
    groups = {}
    for r in rows:
        sub, rep, done = int(r["sub"]), int(r["rep"]), int(r["done"])
        bulk = int(r.get("bulk") or 0)
        kind = KINDS.get(int(r["kind"]), r["kind"])
        if r.get("landed") == "1":
            kind += " (landed)"  # copied in by its rail thread: no bulk stamp
        st = groups.setdefault(kind, {})

        def add(name, a, b):
            if a and b and b >= a:
                st.setdefault(name, []).append((b - a) / 1e3)
        add("sub->rep", sub, rep)
        if kind.startswith("get"):
            add("rep->bulk", rep, bulk)
        else:
            add("sub->bulk", sub, bulk)
        add("bulk->done", bulk, done)
        add("total", sub, done)
    for kind, st in sorted(groups.items()):
        n = len(st.get("total", []))
        print(f"{kind}: {n} ops")
        print(f"  {'stage':12} {'p10':>9} {'p50':>9} {'p90':>9} {'p99':>9}  (us)")
        for name, v in st.items():
            print(f"  {name:12} " + " ".join(f"{pct(v, q):9.1f}" for q in (0.1, 0.5, 0.9, 0.99)))


if __name__ == "__main__":
    main()
