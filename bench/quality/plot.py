#!/usr/bin/env python3
"""Plot compression ratio vs perplexity change from a kvtc-quality --out JSON.

usage: plot.py RESULTS.json OUT.png

kvtc plans (main targets and the finer sweep) form one curve per variant; the
baselines are single points. The y axis is symmetric-log: changes run from
hundredths of a percent (lossless bf16) to thousands (2-bit)."""
import json
import sys

import matplotlib

matplotlib.use("Agg")  # no display on build machines
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402


def main(argv):
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    with open(argv[1]) as f:
        doc = json.load(f)
    methods = doc["methods"]
    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=110)

    curves = {}
    for m in methods:
        if m.get("target") is not None:
            curves.setdefault(m["method"], {})[m["ratio"]] = m["ppl_delta_pct"]
    styles = {"kvtc": ("tab:blue", "o-"), "kvtc-lnorm": ("tab:cyan", "s--"),
              "kvtc-sens": ("tab:purple", "s--")}
    for name, pts in sorted(curves.items()):
        xs = sorted(pts)
        color, fmt = styles.get(name, ("tab:gray", "o-"))
        ax.plot(xs, [pts[x] for x in xs], fmt, color=color, label=name, ms=4)

    markers = {"fp8-e4m3": "^", "int4-g32": "D", "kivi2-g32": "v", "zstd-bf16": "*"}
    for m in methods:
        if m.get("target") is None:
            ax.plot([m["ratio"]], [m["ppl_delta_pct"]], markers.get(m["method"], "x"),
                    ms=9, label=m["method"], linestyle="none")

    bests = doc.get("max_ratio_within_1pct_by_method") or {
        "kvtc": doc.get("kvtc_max_ratio_within_1pct")}
    for i, (name, best) in enumerate(sorted(bests.items())):
        if best:
            ax.annotate(f"{name} {best['ratio']:.2f}x within 1%",
                        (best["ratio"], best["ppl_delta_pct"]),
                        textcoords="axes fraction", xytext=(0.45, 0.06 + 0.06 * i),
                        fontsize=8, arrowprops={"arrowstyle": "-", "lw": 0.5})
    ax.axhline(1.0, color="tab:red", lw=0.8, ls=":", label="+1% perplexity")
    ax.set_xscale("log", base=2)
    ticks = [1, 1.5, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64]
    lo = min(m["ratio"] for m in methods)
    hi = max(m["ratio"] for m in methods)
    ax.set_xticks([t for t in ticks if lo / 1.2 <= t <= hi * 1.2])
    ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%gx"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_yscale("symlog", linthresh=1.0)
    ax.set_ylim(bottom=min(-0.1, min(m["ppl_delta_pct"] for m in methods) - 0.1))
    ax.set_xlabel("compression ratio (all stored bytes vs bf16)")
    ax.set_ylabel("perplexity change (%)")
    p = doc["protocol"]
    ax.set_title(f"{doc['model']}: prefix {p['prefix_tokens']} tokens restored, "
                 f"next {p['scored_tokens']} scored\n"
                 f"{p['eval_seqs']} eval sequences, baseline ppl {doc['baseline_ppl']:.3f}",
                 fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(argv[2])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
