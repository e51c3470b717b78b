"""kvtc_codec - a thin ctypes binding over libkvtc_codec.so and the baseline
quantizers of libkvtc_bench.so, for the Hugging Face quality harness.

The structs mirror include/kvtc_codec.h and bench/quality/baselines.h field
for field (ctypes applies the same natural alignment as the C compiler, so
the u64 after three u32 in kvtc_calib_params gets its padding). Every C call
that returns an int is checked: a negative code raises KvtcError carrying
kvtc_strerror's text.

Libraries are found as the client binding finds libkvtc.so (kvtc/_lib.py:
$KVTC_LIBDIR, $KVTC_BUILD/lib, build/lib of the repository, the system), and
the structs both bindings mirror (kvtc_layout, kvtc_container_info,
kvtc_plan_info, kvtc_calib_params) are the client's (kvtc/_types.py), so
one definition follows the header. Arrays cross as numpy
buffers; nothing is copied that C could read in place.
"""

import ctypes as C
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "..", "..", "..", "client", "python"))

from kvtc import _lib  # noqa: E402
from kvtc import _types as T  # noqa: E402
from kvtc._types import (DTYPE_BF16, DTYPE_FP16, DTYPE_FP32,  # noqa: E402,F401
                         DTYPE_FP8_E4M3, ROPE_HALF_SPLIT, ROPE_INTERLEAVED,
                         ROPE_NONE, ROPE_SCALING_LINEAR, ROPE_SCALING_LLAMA3,
                         ROPE_SCALING_NONE, CalibParams, ContainerInfo,
                         Layout, PlanInfo)

# enum kvtc_stage
STAGE_DEFLATE, STAGE_ZSTD, STAGE_STORE = 0, 1, 2
# enum kvtc_chunk_flags
CHUNK_RAW = 1
SINK_TOKENS = 4
# enum kvtc_bl_method
BL_FP8, BL_INT4, BL_KIVI2, BL_ZSTD = 1, 2, 3, 4


class Chunk(C.Structure):
    _fields_ = [
        ("data", C.c_void_p),
        ("n_tokens", C.c_uint32),
        ("first_pos", C.c_uint32),
        ("flags", C.c_uint32),
    ]


class KvtcError(RuntimeError):
    def __init__(self, func, code, text):
        super().__init__("%s: %s (%d)" % (func, text, code))
        self.code = code


_MIRRORS = {"kvtc_layout": Layout, "kvtc_calib_params": CalibParams,
            "kvtc_plan_info": PlanInfo, "kvtc_chunk": Chunk,
            "kvtc_container_info": ContainerInfo}


def check_header(path=None):
    """Compare the field names of the mirrored structs with the C header.

    C has no sizeof to ask at run time, and a struct that grew in C but not
    here makes C read past Python's buffer (it happened): so parse the
    header's `typedef struct NAME { ... } NAME;` bodies and insist on the
    same fields in the same order. Raises RuntimeError on a mismatch."""
    if path is None:
        path = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                            "..", "..", "..", "include", "kvtc_codec.h")
    with open(path) as fh:
        text = fh.read()
    for name, cls in _MIRRORS.items():
        fields = T.header_fields(text, name)
        mine = [f for f, _ in cls._fields_]
        if fields != mine:
            raise RuntimeError("%s: header has %s, binding has %s" % (name, fields, mine))


_codec = None
_bench = None


def _check(lib, func, rc):
    if rc < 0:
        # libkvtc_bench.so links only the codec objects it needs, so names
        # come from libkvtc_codec.so when that loads (the codes are shared).
        try:
            text = codec().kvtc_strerror(rc).decode()
        except OSError:
            text = "kvtc error"
        raise KvtcError(func, rc, text)
    return rc


_proto = _lib._proto


def codec():
    """libkvtc_codec.so with every prototype declared (loaded once)."""
    global _codec
    if _codec is not None:
        return _codec
    lib = C.CDLL(_lib.find_library("libkvtc_codec.so"))
    vp, sz, u32, i32 = C.c_void_p, C.c_size_t, C.c_uint32, C.c_int
    LP = C.POINTER(Layout)
    _proto(lib, "kvtc_strerror", C.c_char_p, [i32])
    _proto(lib, "kvtc_version_string", C.c_char_p, [])
    _proto(lib, "kvtc_layout_check", i32, [LP])
    _proto(lib, "kvtc_chunk_bytes", sz, [LP, u32])
    _proto(lib, "kvtc_row_width", sz, [LP])
    _proto(lib, "kvtc_profile_load", i32, [vp, sz, C.POINTER(vp)])
    _proto(lib, "kvtc_profile_load_file", i32, [C.c_char_p, C.POINTER(vp)])
    _proto(lib, "kvtc_profile_size", sz, [vp])
    _proto(lib, "kvtc_profile_save", i32, [vp, vp, sz])
    _proto(lib, "kvtc_profile_save_file", i32, [vp, C.c_char_p])
    _proto(lib, "kvtc_profile_free", None, [vp])
    _proto(lib, "kvtc_profile_id", C.c_uint64, [vp])
    _proto(lib, "kvtc_profile_layout", LP, [vp])
    _proto(lib, "kvtc_profile_plan_count", u32, [vp])
    _proto(lib, "kvtc_profile_plan_info", i32, [vp, u32, C.POINTER(PlanInfo)])
    _proto(lib, "kvtc_profile_find_plan", u32, [vp, C.c_float])
    _proto(lib, "kvtc_calibrator_create", i32,
           [LP, C.POINTER(CalibParams), C.POINTER(vp)])
    _proto(lib, "kvtc_calibrator_add", i32, [vp, vp, u32, u32])
    _proto(lib, "kvtc_calibrator_rows", C.c_uint64, [vp])
    _proto(lib, "kvtc_calibrator_fit", i32, [vp])
    _proto(lib, "kvtc_calibrator_plan", i32, [vp, C.c_float, C.POINTER(PlanInfo)])
    _proto(lib, "kvtc_calibrator_profile", i32, [vp, C.POINTER(vp)])
    _proto(lib, "kvtc_calibrator_finish", i32,
           [vp, C.POINTER(C.c_float), u32, C.POINTER(vp)])
    _proto(lib, "kvtc_calibrator_free", None, [vp])
    _proto(lib, "kvtc_encoder_create", i32, [vp, u32, u32, i32, C.POINTER(vp)])
    _proto(lib, "kvtc_encoder_free", None, [vp])
    _proto(lib, "kvtc_encode_bound", sz, [vp, u32])
    _proto(lib, "kvtc_encode", i32,
           [vp, C.POINTER(Chunk), vp, sz, C.POINTER(sz)])
    _proto(lib, "kvtc_decoder_create", i32, [vp, C.POINTER(vp)])
    _proto(lib, "kvtc_decoder_free", None, [vp])
    _proto(lib, "kvtc_inspect", i32, [vp, sz, C.POINTER(ContainerInfo)])
    _proto(lib, "kvtc_decode", i32,
           [vp, vp, sz, vp, sz, C.POINTER(ContainerInfo)])
    _proto(lib, "kvtc_to_float", i32, [u32, vp, vp, sz])
    _proto(lib, "kvtc_from_float", i32, [u32, vp, vp, sz])
    _proto(lib, "kvtc_rope_apply", None,
           [LP, vp, sz, C.POINTER(C.c_uint32), i32])
    _codec = lib
    return lib


def bench():
    """libkvtc_bench.so (the baseline quantizers), loaded once."""
    global _bench
    if _bench is not None:
        return _bench
    lib = C.CDLL(_lib.find_library("libkvtc_bench.so"))
    _proto(lib, "kvtc_bl_name", C.c_char_p, [C.c_int])
    _proto(lib, "kvtc_bl_roundtrip", C.c_int,
           [C.c_int, C.POINTER(Layout), C.c_void_p, C.c_uint32, C.c_void_p,
            C.POINTER(C.c_size_t)])
    _bench = lib
    return lib


def version():
    return codec().kvtc_version_string().decode()


def _ptr(a):
    return C.c_void_p(a.ctypes.data)


def _contig(a, dtype):
    a = np.ascontiguousarray(a, dtype=dtype)
    return a


# ---- dtype helpers (the codec's own conversions, so rounding matches) ----

def to_float(dtype, raw):
    """Chunk bytes (numpy uint16/uint8 array) of dtype -> float32 array."""
    raw = np.ascontiguousarray(raw)
    n = raw.size
    out = np.empty(n, dtype=np.float32)
    _check(codec(), "kvtc_to_float",
           codec().kvtc_to_float(dtype, _ptr(raw), _ptr(out), n))
    return out.reshape(raw.shape)


def from_float(dtype, x):
    """float32 array -> chunk elements of dtype (uint16 for bf16/fp16)."""
    x = _contig(x, np.float32)
    et = {DTYPE_BF16: np.uint16, DTYPE_FP16: np.uint16, DTYPE_FP32: np.float32,
          DTYPE_FP8_E4M3: np.uint8}[dtype]
    out = np.empty(x.shape, dtype=et)
    _check(codec(), "kvtc_from_float",
           codec().kvtc_from_float(dtype, _ptr(x), _ptr(out), x.size))
    return out


# ---- profiles ----

class Profile:
    """An immutable kvtc profile (owns the C object)."""

    def __init__(self, handle):
        self._h = C.c_void_p(handle)

    @classmethod
    def load(cls, data):
        buf = C.create_string_buffer(bytes(data), len(data))
        h = C.c_void_p()
        _check(codec(), "kvtc_profile_load",
               codec().kvtc_profile_load(buf, len(data), C.byref(h)))
        return cls(h.value)

    @classmethod
    def load_file(cls, path):
        h = C.c_void_p()
        _check(codec(), "kvtc_profile_load_file",
               codec().kvtc_profile_load_file(os.fsencode(path), C.byref(h)))
        return cls(h.value)

    def save(self):
        n = codec().kvtc_profile_size(self._h)
        buf = C.create_string_buffer(n)
        _check(codec(), "kvtc_profile_save", codec().kvtc_profile_save(self._h, buf, n))
        return buf.raw

    def save_file(self, path):
        _check(codec(), "kvtc_profile_save_file",
               codec().kvtc_profile_save_file(self._h, os.fsencode(path)))

    @property
    def id(self):
        return codec().kvtc_profile_id(self._h)

    @property
    def layout(self):
        lp = codec().kvtc_profile_layout(self._h)
        return Layout.from_buffer_copy(lp.contents)

    def plans(self):
        out = []
        for i in range(codec().kvtc_profile_plan_count(self._h)):
            pi = PlanInfo()
            _check(codec(), "kvtc_profile_plan_info",
                   codec().kvtc_profile_plan_info(self._h, i, C.byref(pi)))
            out.append(pi.as_dict())
        return out

    def find_plan(self, target):
        return codec().kvtc_profile_find_plan(self._h, float(target))

    def close(self):
        if self._h:
            codec().kvtc_profile_free(self._h)
            self._h = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


class Calibrator:
    def __init__(self, layout, max_rows=0, plan_rows=0, max_components=0, seed=1,
                 value_weight=0.0, slab_weights=None):
        """slab_weights: None or 2*layers floats [layer][k|v] (copied by C)."""
        self._layout = layout
        sw = None
        if slab_weights is not None:
            if len(slab_weights) != 2 * layout.layers:
                raise ValueError("slab_weights needs %d values" % (2 * layout.layers))
            sw = (C.c_float * len(slab_weights))(*slab_weights)
        p = CalibParams(max_rows, plan_rows, max_components, seed, value_weight,
                        C.cast(sw, C.POINTER(C.c_float)) if sw is not None else None)
        h = C.c_void_p()
        _check(codec(), "kvtc_calibrator_create",
               codec().kvtc_calibrator_create(C.byref(layout), C.byref(p), C.byref(h)))
        self._h = h

    def add(self, chunk, n_tokens, first_pos):
        """chunk: array in the layout's dtype, canonical layout."""
        chunk = np.ascontiguousarray(chunk)
        want = codec().kvtc_chunk_bytes(C.byref(self._layout), n_tokens)
        if chunk.nbytes != want:
            raise ValueError("chunk has %d bytes, layout wants %d" % (chunk.nbytes, want))
        _check(codec(), "kvtc_calibrator_add",
               codec().kvtc_calibrator_add(self._h, _ptr(chunk), n_tokens, first_pos))

    @property
    def rows(self):
        return codec().kvtc_calibrator_rows(self._h)

    def fit(self):
        """Means, PCA bases and the planner's error tables (once)."""
        _check(codec(), "kvtc_calibrator_fit", codec().kvtc_calibrator_fit(self._h))

    def plan(self, target):
        """One plan for target (after fit); -> its PlanInfo as a dict."""
        pi = PlanInfo()
        _check(codec(), "kvtc_calibrator_plan",
               codec().kvtc_calibrator_plan(self._h, float(target), C.byref(pi)))
        return pi.as_dict()

    def profile(self):
        h = C.c_void_p()
        _check(codec(), "kvtc_calibrator_profile",
               codec().kvtc_calibrator_profile(self._h, C.byref(h)))
        return Profile(h.value)

    def finish(self, targets):
        arr = (C.c_float * len(targets))(*targets)
        h = C.c_void_p()
        _check(codec(), "kvtc_calibrator_finish",
               codec().kvtc_calibrator_finish(self._h, arr, len(targets), C.byref(h)))
        return Profile(h.value)

    def close(self):
        if self._h:
            codec().kvtc_calibrator_free(self._h)
            self._h = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


class Encoder:
    def __init__(self, profile, plan, stage=STAGE_DEFLATE, level=0):
        self._profile = profile  # keeps the profile alive as C requires
        h = C.c_void_p()
        _check(codec(), "kvtc_encoder_create",
               codec().kvtc_encoder_create(profile._h, plan, stage, level, C.byref(h)))
        self._h = h
        self._layout = profile.layout

    def encode(self, chunk, n_tokens, first_pos, flags=0):
        """Encode one canonical chunk (array in the layout's dtype) -> bytes."""
        chunk = np.ascontiguousarray(chunk)
        want = codec().kvtc_chunk_bytes(C.byref(self._layout), n_tokens)
        if chunk.nbytes != want:
            raise ValueError("chunk has %d bytes, layout wants %d" % (chunk.nbytes, want))
        cap = codec().kvtc_encode_bound(self._h, n_tokens)
        dst = C.create_string_buffer(cap)
        n = C.c_size_t()
        ch = Chunk(chunk.ctypes.data, n_tokens, first_pos, flags)
        _check(codec(), "kvtc_encode",
               codec().kvtc_encode(self._h, C.byref(ch), dst, cap, C.byref(n)))
        return dst.raw[:n.value]

    def close(self):
        if self._h:
            codec().kvtc_encoder_free(self._h)
            self._h = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


def inspect(container):
    info = ContainerInfo()
    buf = C.create_string_buffer(bytes(container), len(container))
    _check(codec(), "kvtc_inspect",
           codec().kvtc_inspect(buf, len(container), C.byref(info)))
    return info


class Decoder:
    def __init__(self, profile=None):
        self._profile = profile
        h = C.c_void_p()
        _check(codec(), "kvtc_decoder_create",
               codec().kvtc_decoder_create(profile._h if profile else None, C.byref(h)))
        self._h = h

    def decode(self, container):
        """Container bytes -> (array of the container's dtype, ContainerInfo)."""
        info = inspect(container)
        et = {DTYPE_BF16: np.uint16, DTYPE_FP16: np.uint16, DTYPE_FP32: np.float32,
              DTYPE_FP8_E4M3: np.uint8}[info.layout.dtype]
        esz = np.dtype(et).itemsize
        if info.raw_bytes % esz:
            raise KvtcError("kvtc_decode", -4, "raw size not a whole number of elements")
        out = np.empty(info.raw_bytes // esz, dtype=et)
        buf = C.create_string_buffer(bytes(container), len(container))
        _check(codec(), "kvtc_decode",
               codec().kvtc_decode(self._h, buf, len(container), _ptr(out),
                                   out.nbytes, C.byref(info)))
        return out, info

    def close(self):
        if self._h:
            codec().kvtc_decoder_free(self._h)
            self._h = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


# ---- baselines (bench/quality/baselines.h) ----

def bl_name(method):
    s = bench().kvtc_bl_name(method)
    return s.decode() if s else None


def bl_roundtrip(method, layout, chunk, n_tokens):
    """Quantize+dequantize an FP32 canonical chunk; -> (out, stored_bytes)."""
    chunk = _contig(chunk, np.float32)
    want = 2 * layout.row_width() * n_tokens
    if chunk.size != want:
        raise ValueError("chunk has %d floats, layout wants %d" % (chunk.size, want))
    out = np.empty_like(chunk)
    stored = C.c_size_t()
    _check(bench(), "kvtc_bl_roundtrip",
           bench().kvtc_bl_roundtrip(method, C.byref(layout), _ptr(chunk), n_tokens,
                                     _ptr(out), C.byref(stored)))
    return out, stored.value
