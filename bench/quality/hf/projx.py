#!/usr/bin/env python3
"""Projection cost options on SmolLM2-135M-Instruct (issue #3): what an fp8
(e4m3) projection and layer-grouped PCAs cost in quality, next to the
codec's fp32 projection at the same plan.

Same model, texts, calibration, sensitivity weighting and scoring as
quality.py (whose functions it uses); per evaluation document:
  * kvtc: real containers (kvtc_encode/kvtc_decode), one cross-layer PCA;
  * px-ENC-DEC: the same profile and plan with the encode and decode GEMMs
    emulated in a number format (fp32, bf16 = the GPU codec today, e4m3t =
    e4m3 with per-tensor scales, e4m3rc = per-row/per-column scales) by
    libkvtc_bench.so's kvtc_px_* (bench/quality/projx.h); px-fp32-fp32 is
    checked bit-identical to kvtc on every chunk;
  * groups-G: the layers cut into G contiguous groups, each a slice of the
    canonical chunk with a profile (PCA + plan at the same target) of its
    own, calibrated on the same rows; stored bytes summed over the groups.
    With --joint each group's profile holds a ladder of plans instead and
    the groups' ratios are picked together (joint_plans).
Reported: achieved ratio, K/V relative squared error vs the bf16 input,
the extra error vs the fp32 codec's reconstruction, perplexity change, KL,
top-1 agreement, and the projection's multiply-adds per token (sum over
streams and groups of width x GEMM inner dimension).
"""

import argparse
import ctypes as C
import json
import math
import os
import platform
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import kvtc_codec as kc  # noqa: E402
import quality as q  # noqa: E402

FMTS = {"fp32": 0, "bf16": 1, "e4m3t": 2, "e4m3rc": 3, "e4m3s": 4}
log = q.log


def px_lib():
    lib = kc.bench()
    if not hasattr(lib, "_px"):
        vp, u32 = C.c_void_p, C.c_uint32
        kc._proto(lib, "kvtc_px_create", C.c_int, [vp, u32, u32, u32, C.POINTER(vp)])
        kc._proto(lib, "kvtc_px_free", None, [vp])
        kc._proto(lib, "kvtc_px_roundtrip", C.c_int,
                  [vp, vp, u32, u32, vp, C.POINTER(C.c_size_t)])
        kc._proto(lib, "kvtc_px_gemm_dims", C.c_int,
                  [vp, u32, C.POINTER(u32), C.POINTER(u32)])
        lib._px = True
    return lib


def gemm_dims(profile, plan):
    w, ku = C.c_uint32(), (C.c_uint32 * 2)()
    rc = px_lib().kvtc_px_gemm_dims(profile._h, plan, C.byref(w), ku)
    if rc:
        raise kc.KvtcError("kvtc_px_gemm_dims", rc, "")
    return w.value, [ku[0], ku[1]]


class Px:
    """A profile's plan with emulated projection formats."""

    def __init__(self, profile, plan, enc, dec):
        self.h = C.c_void_p()
        rc = px_lib().kvtc_px_create(profile._h, plan, FMTS[enc], FMTS[dec], C.byref(self.h))
        if rc:
            raise kc.KvtcError("kvtc_px_create", rc, "")
        self.name = "px-%s-%s" % (enc, dec)

    def roundtrip(self, raw, n, first):
        raw = np.ascontiguousarray(raw)
        out = np.empty_like(raw)
        stored = C.c_size_t()
        rc = px_lib().kvtc_px_roundtrip(self.h, kc._ptr(raw), n, first, kc._ptr(out),
                                        C.byref(stored))
        if rc:
            raise kc.KvtcError("kvtc_px_roundtrip", rc, "")
        return out, stored.value

    def __del__(self):
        if getattr(self, "h", None):
            px_lib().kvtc_px_free(self.h)
            self.h = None


def split_layers(L, g):
    """g contiguous groups of layers, sizes as equal as possible."""
    b = [round(i * L / g) for i in range(g + 1)]
    return [(b[i], b[i + 1]) for i in range(g)]


def group_profiles(args, layout, ckv, weights, groups, targets):
    """One profile per layer group, calibrated on the group's slices."""
    profs = []
    for l0, l1 in groups:
        lay = kc.Layout.from_buffer_copy(layout)
        lay.layers = l1 - l0
        sw = None if weights is None else [float(v) for v in weights[2 * l0:2 * l1]]
        cal = kc.Calibrator(lay, max_rows=args.max_rows, seed=args.seed, slab_weights=sw)
        for kv in ckv:
            for t0, n, ch in q.chunks(kv[l0:l1], args.chunk_tokens):
                cal.add(q.bf16_bits(ch), n, t0)
        cal.fit()
        for t in targets:
            cal.plan(t)
        profs.append(cal.profile())
        cal.close()
    return profs


# Plans each group's profile holds when --joint picks the groups' ratios.
JOINT_LADDER = [3, 4, 5, 6, 7, 8, 10, 12, 14, 16, 18, 20, 24, 28, 32, 40]


def joint_plans(profs, spans, row_width, target):
    """Per group, the plan (of its ladder) such that the groups' planned
    errors summed are least within the cross-layer budget (16 * 2 * width /
    target bits per token): the codec's planner spends one budget across
    every component of a row; with a profile per group this choice across
    the ladders gives the groups that freedom back. Planned errors are per
    element in the weighted row space (slab weights are sliced from one
    normalisation), so a group's error is width x (mse_key + mse_value)."""
    budget = 32.0 * row_width / target
    front = [(0.0, 0.0, ())]
    for p, (l0, l1) in zip(profs, spans):
        width = row_width * (l1 - l0) / sum(b - a for a, b in spans)
        opts = [(pi["bits_per_token"], width * (pi["mse_key"] + pi["mse_value"]), i)
                for i, pi in enumerate(p.plans())]
        cand = sorted((b + ob, e + oe, ch + (oi,)) for b, e, ch in front for ob, oe, oi in opts
                      if b + ob <= budget)
        front, best = [], float("inf")
        for c in cand:  # Pareto front: more bits only if less error
            if c[1] < best:
                front.append(c)
                best = c[1]
    if not front:
        raise SystemExit("no plan combination fits %g bits" % budget)
    return list(min(front, key=lambda c: c[1])[2])


class Acc:
    """Running metrics of one method over documents (quality.metrics'
    formulas, accumulated per document so no log-probs are kept)."""

    def __init__(self, name, **extra):
        self.name = name
        self.extra = extra
        self.nll = self.kl = self.agree = 0.0
        self.n = 0
        self.stored = self.bf16 = 0
        self.err = np.zeros((2, 3))
        self.dev = np.zeros(2)  # squared distance to the fp32 codec's reconstruction
        self.seconds = 0.0

    def add(self, ref_lp, tg, lp):
        idx = tg[:, None]
        self.nll += float(-lp.gather(1, idx).sum())
        self.kl += float((ref_lp.exp() * (ref_lp - lp)).sum())
        self.agree += float((ref_lp.argmax(-1) == lp.argmax(-1)).sum())
        self.n += tg.numel()

    def result(self, nll_ref):
        ppl_r, ppl_m = math.exp(nll_ref / self.n), math.exp(self.nll / self.n)
        r = {"method": self.name, "ratio": self.bf16 / self.stored,
             "stored_bytes": int(self.stored), "bf16_bytes": int(self.bf16),
             "ppl": ppl_m, "ppl_delta_pct": 100.0 * (ppl_m / ppl_r - 1.0),
             "kl": self.kl / self.n, "top1": self.agree / self.n,
             "key_rel_err": self.err[0, 0] / self.err[0, 1],
             "value_rel_err": self.err[1, 0] / self.err[1, 1],
             "key_dev_vs_fp32": self.dev[0] / self.err[0, 1],
             "value_dev_vs_fp32": self.dev[1] / self.err[1, 1],
             "seconds": self.seconds}
        r.update(self.extra)
        return r


def kvtc_roundtrip(enc, dec, raw, n, t0):
    blob = enc.encode(raw, n, t0)
    out, info = dec.decode(blob)
    if info.n_tokens != n or info.first_pos != t0:
        raise SystemExit("container describes other tokens")
    return out, len(blob)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prefix", type=int, default=1024)
    ap.add_argument("--score", type=int, default=256)
    ap.add_argument("--eval-docs", type=int, default=12)
    ap.add_argument("--calib-docs", type=int, default=24)
    ap.add_argument("--calib-tokens", type=int, default=1024)
    ap.add_argument("--chunk-tokens", type=int, default=256)
    ap.add_argument("--targets", type=lambda s: [float(x) for x in s.split(",")],
                    default=[8, 16])
    ap.add_argument("--formats", type=lambda s: [tuple(x.split("/")) for x in s.split(",") if x],
                    default=[tuple(x.split("/")) for x in
                             ("bf16/bf16,e4m3t/fp32,e4m3rc/fp32,fp32/e4m3t,fp32/e4m3rc,"
                              "e4m3t/e4m3t,e4m3rc/e4m3rc,e4m3rc/bf16").split(",")],
                    help="ENC/DEC pairs, comma-separated (fp32, bf16, e4m3t, e4m3rc, e4m3s)")
    ap.add_argument("--groups", type=lambda s: [int(x) for x in s.split(",") if x],
                    default=[2, 3, 5])
    ap.add_argument("--joint", action="store_true",
                    help="layer groups get a ladder of plans each and the ratios that "
                         "minimise their summed planned error within the budget")
    ap.add_argument("--max-rows", type=int, default=24576)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--no-sens", dest="sens", action="store_false")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=os.path.join(q.ROOT, "bench/results/projx-smollm2.json"))
    ap.add_argument("--cache-dir", default=os.path.join(q.ROOT, os.environ.get("BUILD", "build-hf"),
                                                        "hf-cache"))
    args = ap.parse_args()
    for e, d in args.formats:
        if e not in FMTS or d not in FMTS:
            raise SystemExit("unknown format in %s/%s" % (e, d))

    kc.check_header()
    px_lib()
    import torch
    torch.set_num_threads(args.threads)
    t_all = time.perf_counter()
    tok, model, model_path = q.load_model()
    layout = q.layout_of(model.config, args.chunk_tokens)
    L = layout.layers
    ctext, cname = q.calib_text()
    etext, ename = q.eval_text()
    doc_len = args.prefix + args.score + 1
    eval_docs = q.documents(tok, etext, args.eval_docs, doc_len)
    calib_docs = q.documents(tok, ctext, args.calib_docs, args.calib_tokens)

    t = time.perf_counter()
    ckv = [q.cached_kv(args.cache_dir, "calib", model_path, d, model) for d in calib_docs]
    log("calibration KV: %d docs (%.1fs)" % (len(ckv), time.perf_counter() - t))
    weights = None
    if args.sens:
        sdoc = q.documents(tok, ctext, args.calib_docs * args.calib_tokens // doc_len + 2,
                           doc_len)[-1]
        t = time.perf_counter()
        skv = q.cached_kv(args.cache_dir, "sens", model_path, sdoc[:args.prefix], model)
        w, _ = q.sensitivities(model, skv, sdoc[args.prefix:args.prefix + 129])
        weights = w / np.exp(np.mean(np.log(w)))
        del skv
        log("sensitivity weights (%.1fs)" % (time.perf_counter() - t))

    # One cross-layer profile, then one per layer group of each split.
    t = time.perf_counter()
    full = group_profiles(args, layout, ckv, weights, [(0, L)], args.targets)[0]
    log("cross-layer profile (%.1fs)" % (time.perf_counter() - t))
    gprofs = {}
    for g in args.groups:
        t = time.perf_counter()
        gprofs[g] = (split_layers(L, g),
                     group_profiles(args, layout, ckv, weights, split_layers(L, g),
                                    JOINT_LADDER if args.joint else args.targets))
        log("groups-%d profiles (%.1fs)" % (g, time.perf_counter() - t))
    del ckv

    # Methods per target: kvtc (containers), px formats, groups.
    accs, runners = [], []
    for target in args.targets:
        plan = full.find_plan(target)
        width, ku = gemm_dims(full, plan)
        macs = width * (ku[0] + ku[1])
        base = {"target": target, "plan": full.plans()[plan], "gemm_macs_per_token": macs,
                "gemm_dims": {"width": width, "kused": ku}}
        enc, dec = kc.Encoder(full, plan), kc.Decoder(full)
        a = Acc("kvtc-%gx" % target, kind="kvtc", **base)
        accs.append(a)
        px32 = Px(full, plan, "fp32", "fp32")
        runners.append(("kvtc", a, (enc, dec, px32)))
        for e, d in args.formats:
            a = Acc("px-%s-%s-%gx" % (e, d, target), kind="px", enc=e, dec=d, **base)
            accs.append(a)
            runners.append(("px", a, Px(full, plan, e, d)))
        for g, (spans, profs) in gprofs.items():
            if args.joint:
                plans = joint_plans(profs, spans, layout.row_width(), target)
            else:
                plans = [p.find_plan(target) for p in profs]
            gm, gd = 0, []
            for p, pl in zip(profs, plans):
                w_, k_ = gemm_dims(p, pl)
                gm += w_ * (k_[0] + k_[1])
                gd.append({"width": w_, "kused": k_})
            a = Acc("groups%d%s-%gx" % (g, "-joint" if args.joint else "", target),
                    kind="groups", groups=g, joint=args.joint,
                    layer_spans=spans, target=target, gemm_macs_per_token=gm,
                    gemm_dims=gd, gemm_macs_vs_cross_layer=gm / macs,
                    plans=[p.plans()[pl] for p, pl in zip(profs, plans)])
            accs.append(a)
            runners.append(("groups", a, [(s, kc.Encoder(p, pl), kc.Decoder(p))
                                          for s, p, pl in zip(spans, profs, plans)]))

    nll_ref, n_ref = 0.0, 0
    t_eval = time.perf_counter()
    for di, d in enumerate(eval_docs):
        kv = q.cached_kv(args.cache_dir, "eval", model_path, d[:args.prefix], model)
        ref_lp, tg = q.score(model, kv, d[args.prefix:])
        nll_ref += float(-ref_lp.gather(1, tg[:, None]).sum())
        n_ref += tg.numel()
        src = q.bf16_round(kv)
        fp32_rec = None
        for kind, a, r in runners:
            t = time.perf_counter()
            rec = np.empty_like(src)
            stored = 0
            for t0, n, ch in q.chunks(src, args.chunk_tokens):
                raw = q.bf16_bits(ch)
                if kind == "kvtc":
                    enc, dec, px32 = r
                    out, nb = kvtc_roundtrip(enc, dec, raw, n, t0)
                    pout, pnb = px32.roundtrip(raw, n, t0)
                    if pnb != nb or not np.array_equal(pout.reshape(-1), out.reshape(-1)):
                        raise SystemExit("px fp32/fp32 differs from kvtc (%d vs %d bytes)"
                                         % (pnb, nb))
                    out = out.reshape(ch.shape)
                elif kind == "px":
                    out, nb = r.roundtrip(raw, n, t0)
                else:
                    out = np.empty_like(raw)
                    nb = 0
                    for (l0, l1), genc, gdec in r:
                        o, b = kvtc_roundtrip(genc, gdec, np.ascontiguousarray(raw[l0:l1]),
                                              n, t0)
                        out[l0:l1] = o.reshape(raw[l0:l1].shape)
                        nb += b
                rec[:, :, t0:t0 + n] = q.bf16_float(out).reshape(ch.shape)
                stored += nb
            if kind == "kvtc":
                fp32_rec = rec
            a.stored += stored
            a.bf16 += kv.size * 2
            a.err += np.array(q.stream_err(src, rec))
            for s in (0, 1):
                dd = rec[:, s] - fp32_rec[:, s]
                a.dev[s] += float(np.sum(dd * dd))
            lp, _ = q.score(model, rec, d[args.prefix:])
            a.add(ref_lp, tg, lp)
            a.seconds += time.perf_counter() - t
        log("doc %d/%d done (%.0fs)" % (di + 1, len(eval_docs), time.perf_counter() - t_eval))

    results = [a.result(nll_ref) for a in accs]
    ppl_ref = math.exp(nll_ref / n_ref)
    hdr = "%-26s %7s %9s %9s %7s %9s %9s %9s %9s %8s" % (
        "method", "ratio", "ppl_chg%", "kl", "top1", "K_relerr", "V_relerr", "K_dev32",
        "V_dev32", "MAC/tok")
    print(hdr)
    print("-" * len(hdr))
    for r in results:
        print("%-26s %7.2f %+9.3f %9.5f %7.4f %9.3e %9.3e %9.2e %9.2e %8.2e" % (
            r["method"], r["ratio"], r["ppl_delta_pct"], r["kl"], r["top1"], r["key_rel_err"],
            r["value_rel_err"], r["key_dev_vs_fp32"], r["value_dev_vs_fp32"],
            r["gemm_macs_per_token"]))
    doc = {
        "what": "projection cost options (issue #3): fp8/bf16 projection emulation and "
                "layer-grouped PCAs vs the fp32 cross-layer codec",
        "model": {"name": "SmolLM2-135M-Instruct", "layers": L, "kv_heads": layout.kv_heads,
                  "head_dim": layout.head_dim, "row_width": layout.row_width()},
        "protocol": {"prefix_tokens": args.prefix, "scored_tokens": args.score,
                     "eval_docs": len(eval_docs), "eval_text": ename,
                     "calib_docs": len(calib_docs), "calib_tokens": args.calib_tokens,
                     "calib_text": cname, "max_rows": args.max_rows,
                     "chunk_tokens": args.chunk_tokens, "sensitivity_weights": args.sens,
                     "stored_dtype": "bf16"},
        "dev_vs_fp32": "sum |rec - rec_fp32_codec|^2 / sum |x|^2 per stream",
        "reference_ppl": ppl_ref,
        "results": results,
        "env": {"python": platform.python_version(), "torch": torch.__version__,
                "kvtc": kc.version(), "threads": args.threads},
        "seconds": time.perf_counter() - t_all,
    }
    if args.json:
        os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
        with open(args.json, "w") as fh:
            json.dump(doc, fh, indent=1)
        log("wrote " + args.json)


if __name__ == "__main__":
    main()
