"""Chunk keys: 32 bytes, and the prefix chain the serving engines use.

A key is accepted as 32 bytes (bytes, bytearray, memoryview) or as 64 hex
digits (str); keys are returned as bytes. The chain is libkvtc's own
kvtc_key_chain(), called through ctypes, so keys made here are the keys a C
scheduler or the `kvtc` CLI makes for the same tokens:
    key_i = SHA-256(key_{i-1} || model_fingerprint || tokens of chunk i, u32 LE)
Pure functions: safe from any thread.
"""

import ctypes as C

from . import _lib
from . import _types as T
from .errors import error

KEY_BYTES = T.KEY_BYTES


def to_bytes(key):
    """key (32 bytes or 64 hex digits) -> bytes. Raises TypeError/ValueError."""
    if isinstance(key, str):
        if len(key) != 2 * KEY_BYTES:
            raise ValueError("a hex key has %d digits, got %d" % (2 * KEY_BYTES, len(key)))
        return bytes.fromhex(key)
    if isinstance(key, (bytes, bytearray, memoryview)):
        b = bytes(key)
        if len(b) != KEY_BYTES:
            raise ValueError("a key is %d bytes, got %d" % (KEY_BYTES, len(b)))
        return b
    raise TypeError("a key is %d bytes or a hex str, not %s" % (KEY_BYTES, type(key).__name__))


def to_struct(key, out=None):
    """key -> a kvtc_key struct (filled in place when out is given)."""
    k = out if out is not None else T.Key()
    C.memmove(k.bytes, to_bytes(key), KEY_BYTES)
    return k


def key_array(keys):
    """A list of keys -> a C array of kvtc_key (for lookup/delete/pin)."""
    keys = list(keys)
    arr = (T.Key * max(len(keys), 1))()
    for i, k in enumerate(keys):
        to_struct(k, arr[i])
    return arr, len(keys)


def _fingerprint(fp):
    if fp is None:
        return b""
    if isinstance(fp, str):
        return fp.encode()
    return bytes(fp)


def _tokens(tokens):
    """Token ids -> a C uint32 array (numpy and torch integer arrays, or any
    iterable of ints). Each id must fit in u32: it is hashed as 4 bytes."""
    if hasattr(tokens, "tolist"):  # numpy / torch, without importing either
        tokens = tokens.tolist()
    tokens = [int(t) for t in tokens]
    for t in tokens:
        if not 0 <= t <= 0xFFFFFFFF:
            raise ValueError("token id %d does not fit in u32" % t)
    return (C.c_uint32 * max(len(tokens), 1))(*tokens), len(tokens)


def chain_keys(tokens, chunk_tokens, model_fingerprint, parent=None):
    """Keys of every whole chunk of tokens: key i covers tokens
    [i*chunk_tokens, (i+1)*chunk_tokens) and chains from key i-1 (from
    parent, or nothing, for i = 0). A trailing partial chunk gets no key.

    tokens: ints (list, numpy or torch 1-D); model_fingerprint: bytes or str
    (utf-8) naming the model (weights, rank, dtype); parent: a key or None.
    Returns a list of 32-byte keys. Raises ValueError or KvtcError."""
    if int(chunk_tokens) <= 0:
        raise ValueError("chunk_tokens must be positive, got %r" % chunk_tokens)
    toks, n = _tokens(tokens)
    fp = _fingerprint(model_fingerprint)
    n_keys = n // int(chunk_tokens)
    keys = (T.Key * max(n_keys, 1))()
    got = C.c_size_t(0)
    par = C.byref(to_struct(parent)) if parent is not None else None
    rc = _lib.lib().kvtc_key_chain(par, fp, len(fp), toks, n, int(chunk_tokens),
                                   keys, n_keys, C.byref(got))
    if rc:
        raise error(rc, "kvtc_key_chain failed", "chain_keys")
    return [bytes(keys[i].bytes) for i in range(got.value)]


def key_next(parent, model_fingerprint, tokens):
    """One chain step: SHA-256(parent || fingerprint || tokens as u32 LE);
    parent None for a sequence's first chunk. Returns 32 bytes."""
    toks, n = _tokens(tokens)
    fp = _fingerprint(model_fingerprint)
    out = T.Key()
    par = C.byref(to_struct(parent)) if parent is not None else None
    rc = _lib.lib().kvtc_key_next(par, fp, len(fp), toks, n, C.byref(out))
    if rc:
        raise error(rc, "kvtc_key_next failed", "key_next")
    return bytes(out.bytes)


__all__ = ["KEY_BYTES", "chain_keys", "key_next", "to_bytes"]
