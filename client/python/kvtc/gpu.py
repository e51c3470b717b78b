"""The KVTC codec on the caller's GPU (libkvtc_gpu.so, include/kvtc_gpu.h),
through ctypes: decode containers fetched with want="container" straight
into torch CUDA tensors, and calibrate profiles (GPU PCA when a GPU is
there, else the CPU's).

    from kvtc import gpu
    prof = gpu.Profile(kvtcp_bytes)                 # or gpu.calibrate(...)
    dec = gpu.Decoder(prof, prof.find_plan(16))     # one context per plan
    status = dec.decode(src, offsets, sizes, out, first_pos)   # async
    dec.check(status)                               # syncs, raises on errors

src is a uint8 CUDA tensor holding the containers (container i at
offsets[i], sizes[i] bytes); out is a contiguous CUDA tensor of n canonical
chunks [n][layer][k|v][token][kv_head][head_dim] (or a list of n tensors).
Work is queued on torch's current stream of the device, so later torch
work on that stream is ordered after it without a sync.

libkvtc_gpu.so is searched like libkvtc.so (kvtc._lib.find_library:
$KVTC_LIBDIR, $KVTC_BUILD/lib, the repository's build/lib, the system);
$KVTC_GPU_LIB names the file itself. It exists only where the repository
was built with nvcc and nvCOMP; the library also carries the CPU codec
(profiles, calibrator, kvtc_decode), which this module uses when no GPU is
usable. Needs torch only for decode(); calibrate() takes numpy arrays or
CPU tensors too.

Thread-safety: as the C API: a Decoder is used by one thread at a time.
"""

import ctypes as C
import os
import time

from . import _lib
from . import _types as T
from ._closing import Closing
from ._types import CalibParams, ContainerInfo, PlanInfo  # noqa: F401 (kvtc.gpu.PlanInfo, ...)
from .errors import error

# enum kvtc_gpu_gemm / kvtc_chunk_flags
GEMM_BF16, GEMM_FP16 = 0, 1
# enum kvtc_gpu_proj (GpuParams.enc_gemm / dec_gemm: per direction; fp8 is
# opt-in, it costs KV quality: docs/perf-notes.md "Projection cost options")
PROJ_AUTO, PROJ_FP8 = 0, 1
# enum kvtc_gpu_param_field (GpuParams.field_mask), the bits used here
PARAM_FIELD_GEMM, PARAM_FIELD_DEVICE, PARAM_FIELD_TIMING = 1 << 0, 1 << 2, 1 << 3
PARAM_FIELD_DEC_GEMM = 1 << 9
CHUNK_RAW = 1 << 0
N_STAGES = 6


class GpuParams(C.Structure):
    # mirrors struct kvtc_gpu_params (include/kvtc_gpu.h) field for field;
    # field_mask: the PARAM_FIELD_* bits of the fields set, the others default
    _fields_ = [("field_mask", C.c_uint64), ("gemm", C.c_uint32), ("deflate_algo", C.c_int),
                ("device", C.c_int), ("timing", C.c_int), ("inflate", C.c_int), ("deflate", C.c_int),
                ("index_log2", C.c_int), ("decode_index", C.c_int),
                ("enc_gemm", C.c_int), ("dec_gemm", C.c_int)]


class GpuContainer(C.Structure):
    _fields_ = [("src_off", C.c_uint64), ("src_len", C.c_uint64), ("dst", C.c_void_p),
                ("n_tokens", C.c_uint32), ("first_pos", C.c_uint32), ("flags", C.c_uint32)]


def _declare(lib):
    vp, sz, u32, i32, u64 = C.c_void_p, C.c_size_t, C.c_uint32, C.c_int, C.c_uint64
    LP = C.POINTER(T.Layout)
    p = _lib._proto
    p(lib, "kvtc_gpu_available", i32, [])
    p(lib, "kvtc_gpu_codec_create", i32, [vp, u32, C.POINTER(GpuParams), C.POINTER(vp)])
    p(lib, "kvtc_gpu_codec_free", None, [vp])
    p(lib, "kvtc_gpu_decode", i32, [vp, C.POINTER(GpuContainer), u32, vp, vp, vp])
    p(lib, "kvtc_gpu_calibrator_fit", i32, [vp, i32])
    p(lib, "kvtc_gpu_stage_times", i32, [vp, C.POINTER(C.c_float)])
    p(lib, "kvtc_gpu_stage_name", C.c_char_p, [u32])
    p(lib, "kvtc_profile_load", i32, [vp, sz, C.POINTER(vp)])
    p(lib, "kvtc_profile_size", sz, [vp])
    p(lib, "kvtc_profile_save", i32, [vp, vp, sz])
    p(lib, "kvtc_profile_free", None, [vp])
    p(lib, "kvtc_profile_id", u64, [vp])
    p(lib, "kvtc_profile_layout", LP, [vp])
    p(lib, "kvtc_profile_plan_count", u32, [vp])
    p(lib, "kvtc_profile_plan_info", i32, [vp, u32, C.POINTER(PlanInfo)])
    p(lib, "kvtc_profile_find_plan", u32, [vp, C.c_float])
    p(lib, "kvtc_calibrator_create", i32, [LP, C.POINTER(CalibParams), C.POINTER(vp)])
    p(lib, "kvtc_calibrator_add", i32, [vp, vp, u32, u32])
    p(lib, "kvtc_calibrator_rows", u64, [vp])
    p(lib, "kvtc_calibrator_fit", i32, [vp])
    p(lib, "kvtc_calibrator_plan", i32, [vp, C.c_float, C.POINTER(PlanInfo)])
    p(lib, "kvtc_calibrator_profile", i32, [vp, C.POINTER(vp)])
    p(lib, "kvtc_calibrator_free", None, [vp])


_handle = None


def lib():
    """libkvtc_gpu.so with its prototypes declared (loaded once). Raises
    OSError when it is not built (no nvcc/nvCOMP) or does not load."""
    global _handle
    if _handle is None:
        path = os.environ.get("KVTC_GPU_LIB") or _lib.find_library("libkvtc_gpu.so")
        h = C.CDLL(path)
        _declare(h)
        _handle = h
    return _handle


_client = None


def _client_lib():
    """libkvtc.so in a handle of our own (kvtc_strerror, kvtc_inspect: the
    GPU library carries only the codec objects it uses)."""
    global _client
    if _client is None:
        h = C.CDLL(_lib.find_library())
        _lib._proto(h, "kvtc_strerror", C.c_char_p, [C.c_int])
        _lib._proto(h, "kvtc_inspect", C.c_int,
                    [C.c_void_p, C.c_size_t, C.POINTER(ContainerInfo)])
        _client = h
    return _client


def _check(rc, what):
    if rc < 0:
        try:
            msg = _client_lib().kvtc_strerror(rc).decode(errors="replace")
        except OSError:
            msg = ""
        raise error(rc, msg, what)
    return rc


def available():
    """True when libkvtc_gpu.so loads and sees a usable CUDA device."""
    try:
        return bool(lib().kvtc_gpu_available())
    except OSError:
        return False


def _host_ptr(a):
    """(pointer, nbytes, keep) of a contiguous host array or CPU tensor."""
    if type(a).__module__.startswith("torch"):
        if a.is_cuda:
            raise ValueError("calibration chunks must be in host memory")
        a = a.contiguous()
        return a.data_ptr(), a.numel() * a.element_size(), a
    import numpy as np
    a = np.ascontiguousarray(a)
    return a.ctypes.data, a.nbytes, a


class Profile(Closing):
    """A loaded profile (.kvtcp bytes). Keep it alive while Decoders made
    from it exist (the C context reads it)."""

    def __init__(self, data=None, _ptr=None):
        self._lib = lib()
        self._p = C.c_void_p(_ptr)
        if _ptr is None:
            buf = bytes(data)
            _check(self._lib.kvtc_profile_load(buf, len(buf), C.byref(self._p)),
                   "kvtc_profile_load")

    @property
    def id(self):
        return self._lib.kvtc_profile_id(self._p)

    @property
    def layout(self):
        return T.Layout.from_buffer_copy(self._lib.kvtc_profile_layout(self._p).contents)

    @property
    def plan_count(self):
        return self._lib.kvtc_profile_plan_count(self._p)

    def plan_info(self, plan):
        info = PlanInfo()
        _check(self._lib.kvtc_profile_plan_info(self._p, plan, C.byref(info)), "plan_info")
        return info.as_dict()

    def find_plan(self, ratio):
        return self._lib.kvtc_profile_find_plan(self._p, float(ratio))

    def save(self):
        """The .kvtcp bytes (what kvtcd's profile upload takes)."""
        n = self._lib.kvtc_profile_size(self._p)
        buf = C.create_string_buffer(n)
        _check(self._lib.kvtc_profile_save(self._p, buf, n), "kvtc_profile_save")
        return buf.raw

    def close(self):
        if self._p:
            self._lib.kvtc_profile_free(self._p)
            self._p = C.c_void_p()


def calibrate(layout, chunks, targets=(16,), max_components=0, max_rows=0, seed=1,
              use_gpu=None, device=0):
    """A Profile calibrated on chunks: a list of (array, first_pos), each a
    canonical host chunk of layout (numpy array or CPU tensor; its token
    count follows from its size). The PCA runs on the GPU
    (kvtc_gpu_calibrator_fit) when use_gpu is True, or None and a GPU is
    available; the rest on the CPU. Returns (Profile, seconds per step:
    add, fit, plan, total, and fit_on "gpu" or "cpu")."""
    L = lib()
    lay = T.Layout.from_buffer_copy(layout)
    per_token = 2 * lay.layers * lay.kv_heads * lay.head_dim * {1: 2, 2: 2, 3: 4, 4: 1}[lay.dtype]
    if use_gpu is None:
        use_gpu = available()
    cp = CalibParams(max_rows=int(max_rows), max_components=int(max_components), seed=seed)
    cal = C.c_void_p()
    _check(L.kvtc_calibrator_create(C.byref(lay), C.byref(cp), C.byref(cal)), "calibrator")
    times = {}
    try:
        t0 = time.perf_counter()
        for a, pos in chunks:
            ptr, nbytes, keep = _host_ptr(a)
            if nbytes % per_token:
                raise ValueError("%d bytes are not whole tokens of the layout" % nbytes)
            _check(L.kvtc_calibrator_add(cal, ptr, nbytes // per_token, int(pos)),
                   "kvtc_calibrator_add")
            del keep
        t1 = time.perf_counter()
        if use_gpu:
            _check(L.kvtc_gpu_calibrator_fit(cal, device), "kvtc_gpu_calibrator_fit")
        else:
            _check(L.kvtc_calibrator_fit(cal), "kvtc_calibrator_fit")
        t2 = time.perf_counter()
        for r in targets:
            _check(L.kvtc_calibrator_plan(cal, float(r), None), "kvtc_calibrator_plan")
        out = C.c_void_p()
        _check(L.kvtc_calibrator_profile(cal, C.byref(out)), "kvtc_calibrator_profile")
        t3 = time.perf_counter()
        times = {"add_s": t1 - t0, "fit_s": t2 - t1, "plan_s": t3 - t2, "total_s": t3 - t0,
                 "fit_on": "gpu" if use_gpu else "cpu",
                 "rows": L.kvtc_calibrator_rows(cal)}
    finally:
        L.kvtc_calibrator_free(cal)
    return Profile(_ptr=out.value), times


def inspect(container):
    """Header of a container (bytes-like or host array) as a dict; checks
    every section checksum (kvtc_inspect)."""
    if isinstance(container, (bytes, bytearray, memoryview)):
        import numpy as np
        container = np.frombuffer(container, dtype=np.uint8)
    ptr, nbytes, keep = _host_ptr(container)
    info = ContainerInfo()
    _check(_client_lib().kvtc_inspect(ptr, nbytes, C.byref(info)), "kvtc_inspect")
    d = {n: getattr(info, n) for n, _ in ContainerInfo._fields_ if n != "layout"}
    d["layout"] = info.layout.as_dict()
    return d


class Decoder(Closing):
    """A GPU codec context for one profile and plan on one device."""

    def __init__(self, profile, plan, device=0, timing=False, gemm=GEMM_FP16, dec_gemm=PROJ_AUTO):
        self._lib = lib()
        self.profile = profile  # the context reads it: keep it alive
        self.device = device
        self._ctx = C.c_void_p()
        prm = GpuParams(field_mask=(PARAM_FIELD_GEMM | PARAM_FIELD_DEVICE | PARAM_FIELD_TIMING
                                    | PARAM_FIELD_DEC_GEMM),
                        gemm=gemm, device=device, timing=1 if timing else 0, dec_gemm=dec_gemm)
        _check(self._lib.kvtc_gpu_codec_create(profile._p, int(plan), C.byref(prm),
                                               C.byref(self._ctx)), "kvtc_gpu_codec_create")
        self._items = None

    def decode(self, src, offsets, sizes, out, first_pos, n_tokens=None, raw=False,
               status=None, stream=None):
        """Queue the decode of n containers (src: a uint8 CUDA tensor; i at
        offsets[i], sizes[i] bytes) into out: a contiguous CUDA tensor whose
        first dimension is the n chunks, or a list of n CUDA tensors.
        first_pos: the n chunks' first positions (list) or the first
        chunk's, the others following by n_tokens. n_tokens: tokens per
        chunk (default: each output's size / the layout's bytes per token).
        raw: the containers are raw ones (live window). Returns the int32
        status tensor (on the device; 0 or KVTC_E* per chunk): call check()
        or read it after the stream passes. Asynchronous on stream (torch's
        current stream of the device by default)."""
        import torch
        n = len(offsets)
        if len(sizes) != n:
            raise ValueError("%d offsets for %d sizes" % (n, len(sizes)))
        if not (src.is_cuda and src.is_contiguous()):
            raise ValueError("src must be a contiguous CUDA tensor")
        lay = self.profile.layout
        per_token = (2 * lay.layers * lay.kv_heads * lay.head_dim
                     * {1: 2, 2: 2, 3: 4, 4: 1}[lay.dtype])
        if isinstance(out, (list, tuple)):
            if len(out) != n:
                raise ValueError("%d outputs for %d containers" % (len(out), n))
            dsts = [(o.data_ptr(), o.numel() * o.element_size()) for o in out]
            for o in out:
                if not (o.is_cuda and o.is_contiguous()):
                    raise ValueError("outputs must be contiguous CUDA tensors")
        else:
            if not (out.is_cuda and out.is_contiguous()) or out.shape[0] != n:
                raise ValueError("out must be a contiguous CUDA tensor of %d chunks" % n)
            each = out.numel() * out.element_size() // n
            dsts = [(out.data_ptr() + i * each, each) for i in range(n)]
        if isinstance(first_pos, int):
            pos, first_pos = first_pos, []
            for _, nb in dsts:
                first_pos.append(pos)
                pos += n_tokens or nb // per_token
        srclen = src.numel()
        items = (GpuContainer * max(n, 1))()
        for i in range(n):
            off, ln = int(offsets[i]), int(sizes[i])
            if off < 0 or ln <= 0 or off + ln > srclen:
                raise ValueError("container %d [%d, +%d) outside src (%d bytes)"
                                 % (i, off, ln, srclen))
            it = items[i]
            it.src_off, it.src_len, it.dst = off, ln, dsts[i][0]
            it.n_tokens = int(n_tokens or dsts[i][1] // per_token)
            it.first_pos = int(first_pos[i])
            it.flags = CHUNK_RAW if raw else 0
        if status is None:
            status = torch.empty(max(n, 1), dtype=torch.int32, device=src.device)
        if stream is None:
            stream = torch.cuda.current_stream(src.device)
        self._items = items  # host descriptors stay alive while queued
        _check(self._lib.kvtc_gpu_decode(self._ctx, items, n, src.data_ptr(),
                                         status.data_ptr(), stream.cuda_stream),
               "kvtc_gpu_decode")
        return status

    @staticmethod
    def check(status, n=None):
        """Wait for the statuses and raise KvtcError for the first chunk
        that did not decode (its output is not KV)."""
        st = status[:n].cpu() if n is not None else status.cpu()
        bad = (st != 0).nonzero()
        if len(bad):
            i = int(bad[0])
            raise error(int(st[i]), "chunk %d of %d did not decode on the GPU (%d failed)"
                        % (i, len(st), len(bad)), "kvtc_gpu_decode")

    def stage_times(self):
        """Milliseconds per stage of the last call (timing=True), by name."""
        ms = (C.c_float * N_STAGES)()
        _check(self._lib.kvtc_gpu_stage_times(self._ctx, ms), "kvtc_gpu_stage_times")
        return {self._lib.kvtc_gpu_stage_name(i).decode(): ms[i] for i in range(N_STAGES)}

    def close(self):
        if self._ctx:
            self._lib.kvtc_gpu_codec_free(self._ctx)
            self._ctx = C.c_void_p()


__all__ = ["available", "lib", "Profile", "calibrate", "inspect", "Decoder"]
