"""Hugging Face transformers' DynamicCache <-> kvtc canonical chunks.

A DynamicCache holds, per layer, K and V tensors [batch][kv_head][token]
[head_dim]. kvtc stores a sequence as chunks of chunk_tokens tokens in the
canonical layout [layer][k|v][token][kv_head][head_dim], keyed by the prefix
chain (kvtc.chain_keys). Only whole chunks are stored, as the serving
engines do: the trailing partial chunk is recomputed by the model.

Batch size 1 only (one sequence: a chain names one token prefix). Works on
CPU and CUDA tensors; chunks are fetched straight into torch tensors (CUDA
ones through libkvtc's device-buffer support when it was built with CUDA).
Needs torch; transformers only for the DynamicCache that restore() builds.
"""

import torch

from . import _types as T
from .client import make_layout
from .keys import chain_keys

TORCH_DTYPE = {T.DTYPE_BF16: torch.bfloat16, T.DTYPE_FP16: torch.float16,
               T.DTYPE_FP32: torch.float32}
KVTC_DTYPE = {v: k for k, v in TORCH_DTYPE.items()}


def _rope(config):
    """(theta, scaling fields) from a config of any transformers version:
    rope_parameters (5.x) or rope_theta + rope_scaling (4.x)."""
    rp = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    theta = rp.get("rope_theta", getattr(config, "rope_theta", None) or 10000.0)
    kind = rp.get("rope_type", rp.get("type", "default"))
    out = {}
    if kind == "llama3":
        out = dict(rope_scaling=T.ROPE_SCALING_LLAMA3, rope_factor=rp["factor"],
                   rope_low_freq_factor=rp["low_freq_factor"],
                   rope_high_freq_factor=rp["high_freq_factor"],
                   rope_orig_max_pos=rp["original_max_position_embeddings"])
    elif kind == "linear":
        out = dict(rope_scaling=T.ROPE_SCALING_LINEAR, rope_factor=rp["factor"])
    elif kind != "default":
        raise ValueError("RoPE type %r has no kvtc equivalent" % kind)
    return float(theta), out


def layout_from_config(config, dtype=torch.bfloat16, chunk_tokens=256):
    """The kvtc Layout of a Llama-style transformers config (half-split RoPE,
    as Hugging Face Llama applies it) for KV of torch dtype."""
    if dtype not in KVTC_DTYPE:
        raise ValueError("dtype %s: kvtc stores bf16, fp16 or fp32" % dtype)
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    theta, scaling = _rope(config)
    return make_layout(layers=config.num_hidden_layers,
                       kv_heads=getattr(config, "num_key_value_heads", None) or heads,
                       head_dim=head_dim, dtype=KVTC_DTYPE[dtype], chunk_tokens=chunk_tokens,
                       rope_style=T.ROPE_HALF_SPLIT, rope_theta=theta, **scaling)


def _layer_kv(cache, layer):
    """K and V of one layer: cache.layers[l].keys (transformers >= 4.56) or
    cache.key_cache[l] (older)."""
    if hasattr(cache, "layers"):
        lay = cache.layers[layer]
        return lay.keys, lay.values
    return cache.key_cache[layer], cache.value_cache[layer]


def _n_layers(cache):
    return len(cache.layers) if hasattr(cache, "layers") else len(cache.key_cache)


def cache_to_chunks(cache, chunk_tokens, first_token=0, n_tokens=None):
    """Canonical chunks (contiguous tensors [layers][2][n][kv_heads][head_dim])
    of tokens [first_token, first_token + n_tokens) of a batch-1 cache; every
    chunk has chunk_tokens tokens (n_tokens defaults to the whole chunks
    from first_token on)."""
    k0, _ = _layer_kv(cache, 0)
    if k0.shape[0] != 1:
        raise ValueError("batch size %d: one sequence per chain" % k0.shape[0])
    seq = k0.shape[-2]
    if n_tokens is None:
        n_tokens = (seq - first_token) // chunk_tokens * chunk_tokens
    if n_tokens % chunk_tokens or first_token + n_tokens > seq:
        raise ValueError("tokens %d..%d are not whole chunks of %d within %d"
                         % (first_token, first_token + n_tokens, chunk_tokens, seq))
    kv = [_layer_kv(cache, l) for l in range(_n_layers(cache))]
    chunks = []
    for a in range(first_token, first_token + n_tokens, chunk_tokens):
        b = a + chunk_tokens
        # [1][H][t][D] -> [t][H][D]; stack copies into one contiguous chunk.
        chunks.append(torch.stack([torch.stack([k[0, :, a:b].transpose(0, 1),
                                                v[0, :, a:b].transpose(0, 1)])
                                   for k, v in kv]))
    return chunks


def chunks_to_cache(chunks, cache=None):
    """A DynamicCache (new, or `cache` extended) holding the tokens of the
    canonical chunks, in order, on the chunks' device."""
    if cache is None:
        from transformers import DynamicCache
        cache = DynamicCache()
    chunks = list(chunks)
    layers, _, _, heads, dim = chunks[0].shape
    total = sum(c.shape[2] for c in chunks)
    like = dict(dtype=chunks[0].dtype, device=chunks[0].device)
    for layer in range(layers):
        # One copy per element: each chunk's [t][H][D] slab lands transposed
        # in the layer's [1][H][T][D] tensor, as contiguous as the model's own.
        kv = [torch.empty((1, heads, total, dim), **like) for _ in range(2)]
        a = 0
        for c in chunks:
            b = a + c.shape[2]
            for j in range(2):
                kv[j][0, :, a:b].copy_(c[layer, j].transpose(0, 1))
            a = b
        cache.update(kv[0], kv[1], layer)
    return cache


def store(client, cache, tokens, layout, fingerprint, parent=None, ttl_ms=None):
    """Store every whole chunk of a batch-1 cache that holds the KV of tokens.

    Keys chain from parent (kvtc.chain_keys with layout.chunk_tokens); each
    chunk carries the layout, its first position and its parent key. Returns
    the keys stored, in order."""
    ct = layout.chunk_tokens
    keys = chain_keys(tokens, ct, fingerprint, parent)
    if not keys:
        return []
    chunks = cache_to_chunks(cache, ct, 0, len(keys) * ct)
    parents = [parent] + keys[:-1]
    client.put_many(keys, chunks, layout=layout, first_pos=0, parents=parents, ttl_ms=ttl_ms)
    return keys


def restore(client, tokens, layout, fingerprint, device="cpu", parent=None, cache=None):
    """Fetch the longest stored prefix of tokens into a DynamicCache.

    Looks the chain up, fetches the leading hits straight into torch tensors
    on device and builds the cache. Returns (cache, n_tokens restored);
    n_tokens is 0 (and cache None, unless one was given) when nothing is
    stored. A chunk evicted between lookup and get shortens the prefix to
    the chunks before it."""
    ct = layout.chunk_tokens
    keys = chain_keys(tokens, ct, fingerprint, parent)
    hits = client.lookup(keys) if keys else 0
    if not hits:
        return cache, 0
    shape = (layout.layers, 2, ct, layout.kv_heads, layout.head_dim)
    dtype = TORCH_DTYPE[layout.dtype]
    # A libkvtc without device-buffer support refuses CUDA tensors: land the
    # chunks in pinned host memory then, and copy them over.
    staged = torch.device(device).type == "cuda" and not client.server_info["device_memory"]
    land = dict(device="cpu", pin_memory=True) if staged else dict(device=device)
    outs = [torch.empty(shape, dtype=dtype, **land) for _ in range(hits)]
    got = client.get_many(keys[:hits], outs)
    n = next((i for i, g in enumerate(got) if g is None), hits)
    if not n:
        return cache, 0
    if staged:
        outs = [o.to(device, non_blocking=True) for o in outs[:n]]
    return chunks_to_cache(outs[:n], cache), n * ct


__all__ = ["layout_from_config", "cache_to_chunks", "chunks_to_cache", "store", "restore"]
