"""kvtc: Python binding of libkvtc, the client of the kvtcd KV-cache store.

ctypes only (no compiled extension): libkvtc.so is found as _lib.py says
($KVTC_LIB, $KVTC_LIBDIR, $KVTC_BUILD/lib, the repository's build/lib, then
the system). numpy is required; torch is used only when tensors are passed.

    import kvtc
    with kvtc.Client("127.0.0.1:7700") as c:
        keys = kvtc.chain_keys(token_ids, 256, b"llama-3.1-8b/bf16/tp0")
        c.put_many(keys, chunks, layout=layout)
        n = c.lookup(keys)
        arr = c.get(keys[0])

kvtc.hf moves Hugging Face transformers' DynamicCache to and from canonical
chunks (imported on demand: it needs torch).
"""

from ._types import (DTYPE_BF16, DTYPE_FP16, DTYPE_FP32, DTYPE_FP8_E4M3, ROPE_HALF_SPLIT,
                     ROPE_INTERLEAVED, ROPE_NONE, ROPE_SCALING_LINEAR, ROPE_SCALING_LLAMA3,
                     ROPE_SCALING_NONE, Layout)
from .client import Client, make_layout
from .errors import CODES, KvtcError, NotFound
from .keys import chain_keys, key_next

__all__ = ["Client", "KvtcError", "NotFound", "CODES", "Layout", "make_layout",
           "chain_keys", "key_next", "DTYPE_BF16", "DTYPE_FP16", "DTYPE_FP32",
           "DTYPE_FP8_E4M3", "ROPE_NONE", "ROPE_INTERLEAVED", "ROPE_HALF_SPLIT",
           "ROPE_SCALING_NONE", "ROPE_SCALING_LINEAR", "ROPE_SCALING_LLAMA3"]
