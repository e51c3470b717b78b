"""Client: one libkvtc connection to a kvtcd, with blocking operations.

Misses: get() raises NotFound (a KeyError and a KvtcError with code
KVTC_ENOENT); get_many() returns None in a missed key's place, since a batch
that partly hits is the normal case for a prefix. lookup() counts leading
hits and never raises for misses.

Thread-safety: libkvtc lets one thread at a time use a connection, so each
Client serializes its calls with a lock; sharing one Client between threads
is safe but not parallel (use one Client per thread for that). ctypes
releases the GIL during the C calls.

fork(): UCX does not survive it. Create Clients after forking (or in the
child after exec), never before, as libkvtc documents.

Compression (protocol 1.2): put(ratio=R) has the daemon compress the chunk
with the profile it holds for the chunk's layout (upload_profile();
without one the chunk is stored raw); put(container=True) stores a
container made on this side (kvtc_encode, kvtc.gpu) as is. get(want="raw")
has the daemon decode, want="kvtc" moves the container (~1/R of the bytes)
and libkvtc decodes it on the CPU into the result, want="container" returns
the container itself. Chunks stored raw always come back raw.
"""

import ctypes as C
import os
import threading

import numpy as np

from . import _lib
from . import _types as T
from . import buffers
from ._closing import Closing
from .errors import KVTC_ENOENT, KVTC_ENOSPC, error
from .keys import key_array, to_bytes, to_struct

# Fetch size tried first when get() has no out: grows to the largest chunk
# seen, so a second round trip (after KVTC_ENOSPC) happens once per size.
# One batch's guessed buffers stay within _GUESS_BUDGET (untouched pages cost
# nothing, but a thousand 256 MiB guesses would exhaust the address space).
_FIRST_HINT = 1 << 20
_GUESS_BUDGET = 1 << 30


_WANTS = {"raw": T.WANT_RAW, "kvtc": T.WANT_KVTC, "container": T.WANT_CONTAINER}


def _want_of(want):
    try:
        return _WANTS[want]
    except (KeyError, TypeError):
        raise ValueError("want=%r: one of %s" % (want, ", ".join(map(repr, _WANTS)))) from None


def _profile_id(pid):
    """A profile id from an int or its 16-digit hex form (as kvtc prints it)."""
    return int(pid, 16) if isinstance(pid, str) else int(pid)


def _profile_dict(info):
    return {"id": info.id, "layout": T.Layout.from_buffer_copy(info.layout),
            "size": info.size, "ratios": [info.ratios[i] for i in range(info.n_plans)]}


def make_layout(layout=None, **fields):
    """A kvtc_layout from a Layout, a dict of its fields, or keywords
    (layers, kv_heads, head_dim, dtype, chunk_tokens, rope_*). Unset fields
    are 0. Checked against libkvtc's bounds: KvtcError(KVTC_EINVAL)."""
    if isinstance(layout, T.Layout):
        out = T.Layout.from_buffer_copy(layout)
    else:
        out = T.Layout()
        fields = dict(layout or {}, **fields)
    for name, value in fields.items():
        setattr(out, name, value)
    rc = _lib.lib().kvtc_layout_check(C.byref(out))
    if rc:
        raise error(rc, "layout out of bounds: %r" % out, "make_layout")
    return out


def _tokens_of(layout, nbytes):
    """Tokens of a canonical chunk of nbytes under layout (ValueError if not
    a whole number)."""
    per_token = (2 * layout.layers * layout.kv_heads * layout.head_dim
                 * buffers.DTYPE_SIZE.get(layout.dtype, 0))
    if not per_token or nbytes % per_token:
        raise ValueError("%d bytes are not a whole number of tokens of %r" % (nbytes, layout))
    return nbytes // per_token


def _at(arr, i, ctype):
    """A ctype* to element i of a C array (byref with an offset does not
    satisfy an argtypes POINTER(ctype))."""
    return C.cast(C.addressof(arr) + i * C.sizeof(ctype), C.POINTER(ctype))


def _as_key_list(keys):
    """One key or an iterable of keys -> list (a lone key is 32 bytes or a
    64-digit hex str, so it cannot be mistaken for a list of keys)."""
    if isinstance(keys, (str, bytes, bytearray, memoryview)):
        return [keys]
    return list(keys)


class Client(Closing):
    """A connection to one kvtcd; a context manager that closes it.

    server: "HOST:PORT" (default $KVTC_SERVER, else libkvtc's 127.0.0.1:7700);
    tenant/token: the namespace and its token; timeouts in ms (None: libkvtc's
    defaults, 5 s to connect, 60 s per operation; op_timeout_ms=0 waits
    forever). Raises KvtcError (KVTC_ECONN, KVTC_ETIMEDOUT, KVTC_EPERM, ...)."""

    def __init__(self, server=None, tenant=None, token=None, client_name="kvtc-python",
                 connect_timeout_ms=None, op_timeout_ms=None, spin_us=None):
        self._lib = _lib.lib()
        self._lock = threading.Lock()
        self._conn = C.c_void_p()
        server = server or os.environ.get("KVTC_SERVER")
        p = T.ConnParams()
        # ConnParams holds char* into these bytes; they live until connect returns.
        for field, bit, value in (("tenant", T.CONN_TENANT, tenant),
                                  ("token", T.CONN_TOKEN, token),
                                  ("client_name", T.CONN_CLIENT_NAME, client_name)):
            if value is not None:
                setattr(p, field, value.encode())
                p.field_mask |= bit
        for field, bit, value in (("connect_timeout_ms", T.CONN_CONNECT_TIMEOUT, connect_timeout_ms),
                                  ("op_timeout_ms", T.CONN_OP_TIMEOUT, op_timeout_ms),
                                  ("spin_us", T.CONN_SPIN, spin_us)):
            if value is not None:
                setattr(p, field, int(value))
                p.field_mask |= bit
        rc = self._lib.kvtc_connect(server.encode() if server else None, C.byref(p),
                                    C.byref(self._conn))
        if rc:
            raise error(rc, self._lib.kvtc_last_error(None).decode(errors="replace"), "connect")
        info = T.ServerInfo()
        self._lib.kvtc_server_info_get(self._conn, C.byref(info))
        self.server_info = {n: getattr(info, n) for n, _ in T.ServerInfo._fields_
                            if not n.startswith("reserved")}
        self.server_info["server_version"] = info.server_version.decode(errors="replace")
        self._max_batch = max(1, info.max_batch)
        self._hint = _FIRST_HINT
        self._blocks = {}  # address -> array of alloc(): freed by close()

    # ---- life cycle ----------------------------------------------------

    def close(self):
        """Disconnect (idempotent). Operations in flight end first. Arrays
        from alloc() are freed with the connection: do not touch them after."""
        with self._lock:
            if self._conn:
                self._lib.kvtc_disconnect(self._conn)
                self._conn = C.c_void_p()
                self._blocks.clear()

    # ---- buffers shared with kvtcd -----------------------------------------

    def alloc(self, nbytes):
        """A zeroed numpy uint8 array of nbytes for chunk bytes
        (kvtc_mem_alloc): on a connection with the same-host local path its
        memory is shared with kvtcd, so put() from it and get(out=...) into
        it (or a view of it) are plain memory copies in kvtcd. Allocate once
        and reuse (each call is a round trip to kvtcd). Valid until
        free(array) or close(): keep no view of it past that."""
        ptr = C.c_void_p()
        self._call("kvtc_mem_alloc", int(nbytes), C.byref(ptr))
        arr = np.ctypeslib.as_array((C.c_uint8 * int(nbytes)).from_address(ptr.value))
        self._blocks[ptr.value] = arr
        return arr

    def is_shared(self, array):
        """True when array (from alloc(), or a view into one) is memory
        kvtcd shares."""
        with self._lock:
            return bool(self._conn) and self._lib.kvtc_mem_shared(
                self._conn, C.c_void_p(np.asarray(array).ctypes.data)) == 1

    def free(self, array):
        """Free an array from alloc() (no operation may be using it)."""
        addr = np.asarray(array).ctypes.data
        if addr not in self._blocks:
            raise ValueError("not an array from this client's alloc()")
        self._call("kvtc_mem_free", C.c_void_p(addr))
        del self._blocks[addr]

    # ---- plumbing ------------------------------------------------------

    def _check(self, rc, func):
        """Raise for a negative rc with the connection's last error text.
        Called with the lock held, right after the failing call."""
        if rc < 0:
            raise error(rc, self._lib.kvtc_last_error(self._conn).decode(errors="replace"), func)
        return rc

    def _call(self, func, *args):
        with self._lock:
            if not self._conn:
                raise ValueError("Client is closed")
            return self._check(getattr(self._lib, func)(self._conn, *args), func)

    @staticmethod
    def _params(ttl_ms=None, timeout_ms=None):
        p = T.OpParams()
        if ttl_ms is not None:
            p.ttl_ms, p.field_mask = int(ttl_ms), p.field_mask | T.OP_TTL
        if timeout_ms is not None:
            p.timeout_ms, p.field_mask = int(timeout_ms), p.field_mask | T.OP_TIMEOUT
        return C.byref(p) if p.field_mask else None

    def _batches(self, n):
        for lo in range(0, n, self._max_batch):
            yield lo, min(n, lo + self._max_batch)

    # ---- put -----------------------------------------------------------

    def put(self, key, array, layout=None, first_pos=0, n_tokens=None, parent=None,
            ttl_ms=None, live_window=False, mode="raw", timeout_ms=None, ratio=None,
            container=False):
        """Store one chunk under key.

        array: numpy array, torch tensor (CPU or CUDA) or bytes-like; its bytes
        are sent as they are, zero-copy when contiguous. layout (Layout, dict or
        None): the canonical shape, which the daemon needs to compress later;
        with it, n_tokens defaults to what the size implies and first_pos is
        the first token's absolute position. parent: the key this chunk
        extends (prefix-aware eviction). ttl_ms: expiry. live_window: never
        transform-code this chunk.
        ratio (needs a layout): the daemon compresses the chunk at the plan of
        its profile for this layout nearest ratio from above (else the
        highest); stored raw without such a profile or with live_window.
        container=True (or mode="container"): array is a kvtc container
        made on this side; its layout, first_pos and n_tokens come from its
        header unless given, and the daemon refuses it (KVTC_EPROFILE)
        without the container's profile.
        Raises KvtcError (KVTC_EFULL, KVTC_ENOSPC over max_chunk_bytes, ...)."""
        self.put_many([key], [array], layout=layout, first_pos=first_pos,
                      n_tokens=n_tokens, parents=[parent], ttl_ms=ttl_ms,
                      live_window=live_window, mode=mode, timeout_ms=timeout_ms,
                      ratio=ratio, container=container)

    def put_many(self, keys, arrays, layout=None, first_pos=0, n_tokens=None, parents=None,
                 ttl_ms=None, live_window=False, mode="raw", timeout_ms=None, ratio=None,
                 container=False):
        """Store chunks keys[i] <- arrays[i] in as few requests as the daemon's
        max_batch allows (each request is one zero-copy send).

        With a layout, chunk i starts at first_pos plus the tokens of chunks
        0..i-1 (consecutive chunks of one sequence); n_tokens (int, one per
        chunk) defaults to what each size implies. parents: None or one
        key-or-None per chunk. Other arguments as put(). Raises the first
        failed chunk's KvtcError (its message names the chunk); chunks before
        it in the same request may be stored."""
        if mode not in ("raw", "container"):
            raise ValueError("mode=%r: \"raw\" or \"container\"" % (mode,))
        container = bool(container) or mode == "container"
        if ratio is not None:
            ratio = float(ratio)
            if container:
                raise ValueError("ratio= compresses raw chunks; a container is stored as is")
            if layout is None:
                raise ValueError("ratio= needs the chunk's layout (the daemon picks the "
                                 "profile by it)")
            if ratio < 1:
                raise ValueError("ratio=%g: at least 1" % ratio)
        keys, arrays = list(keys), list(arrays)
        if len(keys) != len(arrays):
            raise ValueError("%d keys for %d arrays" % (len(keys), len(arrays)))
        parents = list(parents) if parents is not None else [None] * len(keys)
        if len(parents) != len(keys):
            raise ValueError("%d parents for %d keys" % (len(parents), len(keys)))
        lay = make_layout(layout) if layout is not None else None
        items = (T.PutItem * max(len(keys), 1))()
        keep = []
        pos = int(first_pos)
        for i, (k, a, par) in enumerate(zip(keys, arrays, parents)):
            it = items[i]
            to_struct(k, it.key)
            ptr, size, mem, ref = buffers.source(a)
            keep.append(ref)
            it.data, it.size, it.mem = ptr, size, mem
            it.field_mask = T.PUT_MEM
            if par is not None:
                to_struct(par, it.parent)
                it.field_mask |= T.PUT_PARENT
            if container:
                it.encoding = T.ENCODING_KVTC
                it.field_mask |= T.PUT_ENCODING
                self._container_layout(it, ptr, size, mem, lay, n_tokens, keep)
            elif lay is not None:
                nt = _tokens_of(lay, size) if n_tokens is None else int(n_tokens)
                it.layout = C.pointer(lay)
                it.first_pos, it.n_tokens = pos, nt
                it.field_mask |= T.PUT_LAYOUT
                pos += nt
            if ratio is not None:
                it.target_ratio = ratio
                it.field_mask |= T.PUT_RATIO
            if live_window:
                it.flags = T.PUT_LIVE_WINDOW
                it.field_mask |= T.PUT_FLAGS
            self._hint = max(self._hint, size)
        params = self._params(ttl_ms, timeout_ms)
        with self._lock:
            if not self._conn:
                raise ValueError("Client is closed")
            for lo, hi in self._batches(len(keys)):
                rc = self._lib.kvtc_put_batch(self._conn, C.byref(items[lo]), hi - lo, params)
                if rc:
                    bad = next((i for i in range(lo, hi) if items[i].status), None)
                    what = "put" if bad is None else "put (chunk %d, key %s)" % (
                        bad, to_bytes(keys[bad]).hex())
                    self._check(rc, what)

    def _container_layout(self, it, ptr, size, mem, lay, n_tokens, keep):
        """Layout, first_pos and n_tokens of a client container: its header's
        (validated by kvtc_inspect), or the caller's layout and n_tokens."""
        if mem == T.MEM_HOST:
            info = T.ContainerInfo()
            rc = self._lib.kvtc_inspect(ptr, size, C.byref(info))
            if rc:
                raise error(rc, "put(container=True): not a valid kvtc container", "put")
            own = T.Layout.from_buffer_copy(info.layout) if lay is None else lay
            nt = info.n_tokens if n_tokens is None else int(n_tokens)
            first = info.first_pos
        elif lay is not None and n_tokens is not None:
            own, nt, first = lay, int(n_tokens), 0
        else:
            # A container in GPU memory cannot be inspected here.
            raise ValueError("put(container=True) of device memory needs layout= and n_tokens=")
        keep.append(own)
        it.layout = C.pointer(own)
        it.first_pos, it.n_tokens = first, nt
        it.field_mask |= T.PUT_LAYOUT

    # ---- get -----------------------------------------------------------

    def get(self, key, out=None, want="raw", meta=False, timeout_ms=None):
        """Fetch one chunk. A miss raises NotFound (a KeyError).

        out: a contiguous writable numpy array, torch tensor (CPU or CUDA) or
        bytearray that receives the bytes in place (zero-copy for large
        chunks); it must hold the chunk (else KvtcError KVTC_ENOSPC). Returns
        out itself. Without out, returns a new numpy array: shaped
        [layer][2][token][kv_head][head_dim] in the layout's dtype (bf16 as
        uint16) when the chunk was put with a layout, else flat uint8.
        meta=True returns (array, dict(size, tier, layout, first_pos,
        n_tokens, encoding, wire_size)).
        want (for chunks stored compressed): "raw" (default) the daemon
        decodes; "kvtc" the container travels (~1/ratio of the bytes) and
        libkvtc decodes it on the CPU (the profile is fetched once per
        connection), so the result is the raw chunk either way; "container"
        returns the container itself (flat uint8, meta encoding "kvtc"; decode
        it with kvtc.gpu or libkvtc). Chunks stored raw come back raw
        (encoding "raw") whatever want says."""
        res = self.get_many([key], None if out is None else [out], want=want, meta=True,
                            timeout_ms=timeout_ms)[0]
        if res is None:
            raise error(KVTC_ENOENT, "key %s is not stored" % to_bytes(key).hex(), "get")
        return res if meta else res[0]

    def get_many(self, keys, outs=None, want="raw", meta=False, timeout_ms=None):
        """Fetch chunks in as few requests as max_batch allows. Returns a list
        with, per key, what get() returns, or None where the key is not
        stored. outs: None, or one destination (or None) per key. Other
        errors raise KvtcError naming the first failed key."""
        want = _want_of(want)
        keys = list(keys)
        outs = list(outs) if outs is not None else [None] * len(keys)
        if len(outs) != len(keys):
            raise ValueError("%d outs for %d keys" % (len(outs), len(keys)))
        results = [None] * len(keys)
        todo = list(range(len(keys)))
        # Two passes at most: the second refetches, at their now known sizes,
        # the chunks that did not fit the guessed buffers of the first.
        for attempt in (0, 1):
            retry = self._get_pass(keys, outs, todo, results, timeout_ms, want,
                                   final=attempt == 1)
            if not retry:
                break
            todo = retry
        if meta:
            return results
        return [r[0] if r is not None else None for r in results]

    def _get_pass(self, keys, outs, idx, results, timeout_ms, want, final):
        items = (T.GetItem * max(len(idx), 1))()
        guess = self._hint
        if not final:
            guess = min(guess, max(1 << 16, _GUESS_BUDGET // max(len(idx), 1)))
        bufs = []
        for j, i in enumerate(idx):
            it = items[j]
            to_struct(keys[i], it.key)
            if outs[i] is not None:
                ptr, cap, mem, ref = buffers.dest(outs[i])
            else:
                ref = np.empty(guess, dtype=np.uint8)
                ptr, cap, mem = ref.ctypes.data, ref.nbytes, T.MEM_HOST
            bufs.append(ref)
            it.buf, it.capacity, it.mem, it.field_mask = ptr, cap, mem, T.GET_MEM
            if want != T.WANT_RAW:
                it.want = want
                it.field_mask |= T.GET_WANT
        params = self._params(None, timeout_ms)
        retry = []
        with self._lock:
            if not self._conn:
                raise ValueError("Client is closed")
            for lo, hi in self._batches(len(idx)):
                rc = self._lib.kvtc_get_batch(self._conn, C.byref(items[lo]), hi - lo, params)
                for j in range(lo, hi):
                    it, i = items[j], idx[j]
                    if it.status == KVTC_ENOENT:
                        continue
                    if it.status == KVTC_ENOSPC and outs[i] is None and not final:
                        self._hint = max(self._hint, it.size)
                        retry.append(i)
                        continue
                    if it.status:
                        msg = "key %s: %d-byte chunk, buffer of %d" % (
                            to_bytes(keys[i]).hex(), it.size, it.capacity) \
                            if it.status == KVTC_ENOSPC else "key %s" % to_bytes(keys[i]).hex()
                        raise error(it.status, msg, "get")
                    results[i] = self._result(it, outs[i], bufs[j], want)
                if rc and rc not in (KVTC_ENOENT, KVTC_ENOSPC):
                    self._check(rc, "get")  # the request itself failed
        return retry

    def _result(self, it, out, buf, want):
        # encoding: what landed in the buffer (want="kvtc" decodes here).
        landed = T.ENCODING_KVTC if (want == T.WANT_CONTAINER and
                                     it.encoding == T.ENCODING_KVTC) else T.ENCODING_RAW
        info = {"size": it.size, "tier": T.TIER_NAMES.get(it.tier),
                "layout": T.Layout.from_buffer_copy(it.layout) if it.has_layout else None,
                "first_pos": it.first_pos, "n_tokens": it.n_tokens,
                "encoding": "kvtc" if landed == T.ENCODING_KVTC else "raw",
                "wire_size": it.wire_size}
        if out is not None:
            buffers.after_get(out)
            return out, info
        self._hint = max(self._hint, it.size)
        raw = buf[:it.size]
        if it.has_layout and landed == T.ENCODING_RAW:
            raw = buffers.shaped(raw, it.layout, it.n_tokens)
        return raw, info

    # ---- lookup, delete, pin, stats ------------------------------------

    def lookup(self, keys, tiers=False, timeout_ms=None):
        """How many leading keys of the chain are stored (0 when the first
        misses; never raises for misses). tiers=True returns (hits, list of
        each hit's tier name: "gpu", "host" or "disk"). A chain longer than
        max_batch is asked in pieces, stopping at the first miss."""
        keys = _as_key_list(keys)
        arr, n = key_array(keys)
        tier = (C.c_uint32 * max(n, 1))()
        params = self._params(None, timeout_ms)
        total = 0
        for lo, hi in self._batches(n):
            hits = C.c_size_t(0)
            self._call("kvtc_lookup", C.byref(arr[lo]), hi - lo, params, C.byref(hits),
                       _at(tier, lo, C.c_uint32))
            total += hits.value
            if hits.value < hi - lo:
                break
        if tiers:
            return total, [T.TIER_NAMES.get(tier[i]) for i in range(total)]
        return total

    def _per_key(self, func, keys, params, ok=(0,)):
        """Run a per-key operation in max_batch pieces; raise the first key's
        status outside ok. Returns every key's status."""
        keys = _as_key_list(keys)
        arr, n = key_array(keys)
        st = (C.c_int * max(n, 1))()
        with self._lock:
            if not self._conn:
                raise ValueError("Client is closed")
            for lo, hi in self._batches(n):
                rc = getattr(self._lib, func)(self._conn, C.byref(arr[lo]), hi - lo, params,
                                              _at(st, lo, C.c_int))
                for i in range(lo, hi):
                    if st[i] not in ok:
                        raise error(st[i], "key %s" % to_bytes(keys[i]).hex(), func)
                if rc and rc not in ok:
                    self._check(rc, func)
        return [st[i] for i in range(n)]

    def delete(self, keys, missing_ok=True, timeout_ms=None):
        """Delete one key or a list of keys; returns how many were deleted.
        A pinned key raises KvtcError(KVTC_EPERM); an absent one is skipped
        (missing_ok) or raises NotFound."""
        ok = (0, KVTC_ENOENT) if missing_ok else (0,)
        st = self._per_key("kvtc_delete", keys, self._params(None, timeout_ms), ok)
        return sum(1 for s in st if s == 0)

    def pin(self, keys, ttl_ms=None, timeout_ms=None):
        """Pin keys against eviction (and deletion) for ttl_ms, or until
        unpin() when None/0. An absent key raises NotFound."""
        self._per_key("kvtc_pin", keys, self._params(ttl_ms or None, timeout_ms))

    def unpin(self, keys, timeout_ms=None):
        """Remove pins. An absent key raises NotFound."""
        self._per_key("kvtc_unpin", keys, self._params(None, timeout_ms))

    # ---- codec profiles ------------------------------------------------

    def upload_profile(self, profile, timeout_ms=None):
        """Upload a codec profile (.kvtcp: a path, or its bytes, e.g. from
        `kvtc calibrate` or kvtc.gpu) for the daemon to compress chunks of
        its layout with. Returns its description, a dict (id, layout, size,
        ratios). Uploading one the daemon has is not an error. Raises
        KvtcError (KVTC_ECORRUPT / KVTC_EVERSION / KVTC_EINVAL: not a valid
        profile; KVTC_ENOSPC: over the daemon's limits)."""
        if isinstance(profile, (str, os.PathLike)):
            with open(profile, "rb") as fh:
                profile = fh.read()
        data = bytes(profile)
        info = T.ProfileInfo()
        self._call("kvtc_profile_upload", data, len(data), self._params(None, timeout_ms),
                   C.byref(info))
        return _profile_dict(info)

    def profiles(self, timeout_ms=None):
        """The daemon's profiles, newest first, as upload_profile() describes
        them."""
        cap = 256  # the daemon holds at most 256 (KVTCD_MAX_PROFILES)
        infos = (T.ProfileInfo * cap)()
        n = C.c_size_t()
        self._call("kvtc_profile_list", self._params(None, timeout_ms), infos, cap,
                   C.byref(n))
        return [_profile_dict(infos[i]) for i in range(n.value)]

    def delete_profile(self, profile_id, timeout_ms=None):
        """Delete a profile (its id as an int or 16 hex digits). Chunks
        compressed with it can no longer be served raw (KVTC_EPROFILE) until
        it is uploaded again. An unknown id raises NotFound."""
        self._call("kvtc_profile_delete", _profile_id(profile_id),
                   self._params(None, timeout_ms))

    def stats(self, timeout_ms=None):
        """The daemon's counters as a dict (only those it reported): host RAM
        (chunks, bytes_used, bytes_capacity, ...), the lower tiers
        (gpu_/disk_bytes_used and _capacity, disk_live_bytes,
        disk_dirty_chunks, promotions, demotions; capacity 0 for an absent
        tier) and durable (bool)."""
        s = T.Stats()
        self._call("kvtc_stats_get", self._params(None, timeout_ms), C.byref(s))
        out = {n: getattr(s, n) for i, n in enumerate(T.STATS_FIELDS)
               if s.field_mask & (1 << i)}
        if s.field_mask & T.STATS_FIELD_DURABLE:
            out["durable"] = bool(s.field_mask & T.STATS_DURABLE)
        return out
