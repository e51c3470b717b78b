"""ctypes mirrors of the structs and constants of include/kvtc.h.

Field for field, in the header's order: ctypes applies the C compiler's
natural alignment, so the padding matches. C has no sizeof to ask at run
time and a struct that grows in C but not here makes C write past Python's
buffer, so check_header() (run by the tests) compares the field names with
the header text.
"""

import ctypes as C
import os
import re

KEY_BYTES = 32

# enum kvtc_dtype (kvtc_codec.h)
DTYPE_BF16, DTYPE_FP16, DTYPE_FP32, DTYPE_FP8_E4M3 = 1, 2, 3, 4
# enum kvtc_rope_style
ROPE_NONE, ROPE_INTERLEAVED, ROPE_HALF_SPLIT = 0, 1, 2
# enum kvtc_rope_scaling
ROPE_SCALING_NONE, ROPE_SCALING_LINEAR, ROPE_SCALING_LLAMA3 = 0, 1, 2
# enum kvtc_mem
MEM_AUTO, MEM_HOST, MEM_CUDA = 0, 1, 2
# enum kvtc_tier
TIER_NAMES = {0: None, 1: "gpu", 2: "host", 3: "disk"}
# enum kvtc_conn_param_field
CONN_TENANT, CONN_TOKEN, CONN_CLIENT_NAME = 1 << 0, 1 << 1, 1 << 2
CONN_CONNECT_TIMEOUT, CONN_OP_TIMEOUT, CONN_SPIN, CONN_BULK = 1 << 3, 1 << 4, 1 << 5, 1 << 6
# enum kvtc_put_field / kvtc_put_flags / kvtc_get_field
PUT_PARENT, PUT_LAYOUT, PUT_FLAGS, PUT_MEM = 1 << 0, 1 << 1, 1 << 2, 1 << 3
PUT_RATIO, PUT_ENCODING = 1 << 4, 1 << 5
PUT_LIVE_WINDOW = 1 << 0
GET_MEM, GET_WANT = 1 << 0, 1 << 1
# enum kvtc_encoding / kvtc_want
ENCODING_RAW, ENCODING_KVTC = 0, 1
WANT_RAW, WANT_KVTC, WANT_CONTAINER = 0, 1, 2
# enum kvtc_op_param_field
OP_CALLBACK, OP_TTL, OP_TIMEOUT = 1 << 0, 1 << 1, 1 << 2
# enum kvtc_engine_layout_field
ENGINE_PAGED = 1 << 0

# In kvtc_stats order: field i is filled when field_mask bit i is set.
STATS_FIELDS = ("chunks", "bytes_used", "bytes_capacity", "puts", "gets", "hits",
                "misses", "evictions", "rejected_full", "sessions", "bytes_in",
                "bytes_out", "errors", "uptime_ms",
                "gpu_bytes_used", "gpu_bytes_capacity", "disk_bytes_used",
                "disk_bytes_capacity", "disk_live_bytes", "disk_dirty_chunks",
                "promotions", "demotions")
# field_mask: the daemon reported its durability, and the answer.
STATS_FIELD_DURABLE = 1 << 22
STATS_DURABLE = 1 << 63


class Key(C.Structure):
    _fields_ = [("bytes", C.c_uint8 * KEY_BYTES)]


class Layout(C.Structure):
    """kvtc_layout: the canonical chunk's shape and RoPE parameters."""
    _fields_ = [
        ("layers", C.c_uint32),
        ("kv_heads", C.c_uint32),
        ("head_dim", C.c_uint32),
        ("dtype", C.c_uint32),
        ("chunk_tokens", C.c_uint32),
        ("rope_style", C.c_uint32),
        ("rope_scaling", C.c_uint32),
        ("rope_orig_max_pos", C.c_uint32),
        ("rope_theta", C.c_float),
        ("rope_factor", C.c_float),
        ("rope_low_freq_factor", C.c_float),
        ("rope_high_freq_factor", C.c_float),
    ]

    def row_width(self):
        """Elements of one token's row: layers x kv_heads x head_dim."""
        return self.layers * self.kv_heads * self.head_dim

    def as_dict(self):
        return {n: getattr(self, n) for n, _ in self._fields_}

    def __repr__(self):
        return "Layout(%s)" % ", ".join("%s=%r" % kv for kv in self.as_dict().items())


class KvView(C.Structure):
    _fields_ = [
        ("base", C.c_void_p),
        ("token_stride", C.c_int64),
        ("head_stride", C.c_int64),
        ("block_stride", C.c_int64),
    ]


class EngineLayout(C.Structure):
    _fields_ = [
        ("field_mask", C.c_uint64),
        ("layers", C.c_uint32),
        ("kv_heads", C.c_uint32),
        ("head_dim", C.c_uint32),
        ("elem_size", C.c_uint32),
        ("views", C.POINTER(KvView)),
        ("block_tokens", C.c_uint32),
        ("block_table", C.POINTER(C.c_uint32)),
        ("n_blocks", C.c_size_t),
    ]


class ConnParams(C.Structure):
    _fields_ = [
        ("field_mask", C.c_uint64),
        ("tenant", C.c_char_p),
        ("token", C.c_char_p),
        ("client_name", C.c_char_p),
        ("connect_timeout_ms", C.c_uint32),
        ("op_timeout_ms", C.c_uint32),
        ("spin_us", C.c_uint32),
        ("bulk", C.c_uint32),
        ("local", C.c_uint32),
        ("check_thread", C.c_uint32),
        ("rails", C.c_uint32),
    ]


class ServerInfo(C.Structure):
    _fields_ = [
        ("major", C.c_uint32),
        ("minor", C.c_uint32),
        ("session_id", C.c_uint64),
        ("max_chunk_bytes", C.c_uint64),
        ("max_batch", C.c_uint32),
        ("server_version", C.c_char * 64),
        ("device_memory", C.c_int),
        ("bulk_endpoint", C.c_uint32),
        ("local_path", C.c_uint32),
        ("rails", C.c_uint32),
        ("rail_threads", C.c_uint32),
        ("reserved", C.c_uint64 * 6),
    ]


class PutItem(C.Structure):
    _fields_ = [
        ("field_mask", C.c_uint64),
        ("key", Key),
        ("parent", Key),
        ("data", C.c_void_p),
        ("size", C.c_size_t),
        ("layout", C.POINTER(Layout)),
        ("first_pos", C.c_uint32),
        ("n_tokens", C.c_uint32),
        ("flags", C.c_uint32),
        ("mem", C.c_uint32),
        ("status", C.c_int),
        ("target_ratio", C.c_float),
        ("encoding", C.c_uint32),
        ("reserved", C.c_uint64 * 3),
    ]


class GetItem(C.Structure):
    _fields_ = [
        ("field_mask", C.c_uint64),
        ("key", Key),
        ("buf", C.c_void_p),
        ("capacity", C.c_size_t),
        ("mem", C.c_uint32),
        ("status", C.c_int),
        ("size", C.c_size_t),
        ("tier", C.c_uint32),
        ("has_layout", C.c_int),
        ("layout", Layout),
        ("first_pos", C.c_uint32),
        ("n_tokens", C.c_uint32),
        ("want", C.c_uint32),
        ("encoding", C.c_uint32),
        ("wire_size", C.c_uint64),
        ("decoded_on", C.c_uint32),
        ("reserved32", C.c_uint32),
        ("reserved", C.c_uint64 * 1),
    ]


class Stats(C.Structure):
    _fields_ = [("field_mask", C.c_uint64)] + [(n, C.c_uint64) for n in STATS_FIELDS]


MAX_PLANS = 16  # KVTC_MAX_PLANS (kvtc_codec.h)


class ProfileInfo(C.Structure):
    """kvtc_profile_info: a codec profile the daemon holds."""
    _fields_ = [
        ("id", C.c_uint64),
        ("layout", Layout),
        ("size", C.c_uint64),
        ("n_plans", C.c_uint32),
        ("ratios", C.c_float * MAX_PLANS),
        ("reserved", C.c_uint64 * 4),
    ]


class ContainerInfo(C.Structure):
    """kvtc_container_info: what a container's validated header says."""
    _fields_ = [
        ("version", C.c_uint32),
        ("mode", C.c_uint32),
        ("stage", C.c_uint32),
        ("plan", C.c_uint32),
        ("profile_id", C.c_uint64),
        ("layout", Layout),
        ("n_tokens", C.c_uint32),
        ("first_pos", C.c_uint32),
        ("sink_tokens", C.c_uint32),
        ("pieces", C.c_uint32),
        ("container_bytes", C.c_uint64),
        ("raw_bytes", C.c_uint64),
    ]


class PlanInfo(C.Structure):
    """kvtc_plan_info: one plan of a profile (its ratio and error)."""
    _fields_ = [
        ("target_ratio", C.c_float),
        ("bits_per_token", C.c_float),
        ("mse_key", C.c_float),
        ("mse_value", C.c_float),
        ("key_components", C.c_uint32),
        ("value_components", C.c_uint32),
        ("groups", C.c_uint32),
    ]

    def as_dict(self):
        return {n: getattr(self, n) for n, _ in self._fields_}


class CalibParams(C.Structure):
    """kvtc_calib_params: the calibrator's knobs (0 = default)."""
    _fields_ = [
        ("max_rows", C.c_uint32),
        ("plan_rows", C.c_uint32),
        ("max_components", C.c_uint32),
        ("seed", C.c_uint64),
        ("value_weight", C.c_float),
        ("slab_weights", C.POINTER(C.c_float)),
    ]


DoneCb = C.CFUNCTYPE(None, C.c_int, C.c_void_p)


class OpParams(C.Structure):
    _fields_ = [
        ("field_mask", C.c_uint64),
        ("cb", DoneCb),
        ("arg", C.c_void_p),
        ("ttl_ms", C.c_uint32),
        ("timeout_ms", C.c_uint32),
    ]


# C struct name -> (header, mirror)
MIRRORS = {
    "kvtc_key": ("kvtc.h", Key), "kvtc_layout": ("kvtc_codec.h", Layout),
    "kvtc_kv_view": ("kvtc.h", KvView), "kvtc_engine_layout": ("kvtc.h", EngineLayout),
    "kvtc_conn_params": ("kvtc.h", ConnParams), "kvtc_server_info": ("kvtc.h", ServerInfo),
    "kvtc_put_item": ("kvtc.h", PutItem), "kvtc_get_item": ("kvtc.h", GetItem),
    "kvtc_stats": ("kvtc.h", Stats), "kvtc_op_params": ("kvtc.h", OpParams),
    "kvtc_profile_info": ("kvtc.h", ProfileInfo),
    "kvtc_container_info": ("kvtc_codec.h", ContainerInfo),
    "kvtc_plan_info": ("kvtc_codec.h", PlanInfo),
    "kvtc_calib_params": ("kvtc_codec.h", CalibParams),
}


def header_fields(text, name):
    """Field names of `typedef struct NAME { ... } NAME;` in header text, in
    order; declarations like `uint32_t a, b;` give both names."""
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    m = re.search(r"typedef struct %s \{(.*?)\} %s;" % (name, name), text, re.S)
    if not m:
        raise RuntimeError("struct %s not found" % name)
    out = []
    for decl in m.group(1).split(";"):
        decl = decl.strip()
        if not decl:
            continue
        if "(" in decl:  # function pointer: name inside (*name)
            out.append(re.search(r"\(\s*\*\s*(\w+)\s*\)", decl).group(1))
            continue
        first, *rest = decl.split(",")
        names = [re.split(r"[\s*]+", first.strip())[-1]] + [r.strip(" *") for r in rest]
        out += [n.split("[")[0] for n in names]
    return out


def check_header(include_dir=None):
    """Raise RuntimeError when a mirror's fields differ from the header's."""
    if include_dir is None:
        include_dir = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                   "..", "..", "..", "include")
    texts = {}
    for cname, (hdr, cls) in MIRRORS.items():
        if hdr not in texts:
            with open(os.path.join(include_dir, hdr)) as fh:
                texts[hdr] = fh.read()
        want = header_fields(texts[hdr], cname)
        mine = [f for f, _ in cls._fields_]
        if want != mine:
            raise RuntimeError("%s: header has %s, binding has %s" % (cname, want, mine))
