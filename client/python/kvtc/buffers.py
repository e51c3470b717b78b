"""Arrays as C buffers: pointer, size and memory kind, without copies where
the object allows it.

Accepted: numpy arrays, torch tensors (CPU or CUDA, through data_ptr(); torch
is never imported unless a tensor is passed), and any other object with the
buffer protocol (bytes, bytearray, memoryview). The returned `keep` object
must stay referenced while C uses the pointer.
"""

import numpy as np

from . import _types as T

# kvtc_dtype -> numpy dtype of a fetched chunk. numpy has no bfloat16: bf16
# elements come back as their uint16 bit patterns (view them as torch.bfloat16
# with torch.from_numpy(a).view(torch.bfloat16)).
NUMPY_DTYPE = {T.DTYPE_BF16: np.uint16, T.DTYPE_FP16: np.float16,
               T.DTYPE_FP32: np.float32, T.DTYPE_FP8_E4M3: np.uint8}
DTYPE_SIZE = {T.DTYPE_BF16: 2, T.DTYPE_FP16: 2, T.DTYPE_FP32: 4, T.DTYPE_FP8_E4M3: 1}


def is_tensor(obj):
    """A torch.Tensor, recognized without importing torch."""
    return type(obj).__module__.startswith("torch") and hasattr(obj, "data_ptr")


def _sync_cuda(t):
    """Finish the tensor's pending kernels: libkvtc copies (or UCX sends)
    device memory outside torch's stream ordering."""
    import torch
    torch.cuda.current_stream(t.device).synchronize()


def source(obj):
    """What put sends: (ptr, nbytes, mem, keep). A non-contiguous array or
    tensor is copied into a contiguous one first (that is the only copy)."""
    if is_tensor(obj):
        t = obj if obj.is_contiguous() else obj.contiguous()
        if t.is_cuda:
            _sync_cuda(t)
        mem = T.MEM_CUDA if t.is_cuda else T.MEM_HOST
        return t.data_ptr(), t.numel() * t.element_size(), mem, t
    a = obj if isinstance(obj, np.ndarray) else np.frombuffer(obj, dtype=np.uint8)
    a = np.ascontiguousarray(a)
    return a.ctypes.data, a.nbytes, T.MEM_HOST, a


def dest(obj):
    """Where get writes: (ptr, capacity, mem, keep). The object is written in
    place, so it must be contiguous and writable: ValueError otherwise."""
    if is_tensor(obj):
        if not obj.is_contiguous():
            raise ValueError("out tensor must be contiguous")
        if obj.is_cuda:
            _sync_cuda(obj)
        mem = T.MEM_CUDA if obj.is_cuda else T.MEM_HOST
        return obj.data_ptr(), obj.numel() * obj.element_size(), mem, obj
    a = obj if isinstance(obj, np.ndarray) else np.frombuffer(obj, dtype=np.uint8)
    if not a.flags.c_contiguous:
        raise ValueError("out array must be C-contiguous")
    if not a.flags.writeable:
        raise ValueError("out array must be writable")
    return a.ctypes.data, a.nbytes, T.MEM_HOST, a


def after_get(obj):
    """Order a CUDA out tensor's later kernels after the copy libkvtc made."""
    if is_tensor(obj) and obj.is_cuda:
        _sync_cuda(obj)


def shaped(raw, layout, n_tokens):
    """A fetched uint8 array viewed as the canonical chunk
    [layer][k|v][token][kv_head][head_dim] of layout's dtype; raw itself when
    the sizes disagree (the bytes are then not what the layout says)."""
    dt = NUMPY_DTYPE.get(layout.dtype)
    shape = (layout.layers, 2, n_tokens, layout.kv_heads, layout.head_dim)
    if dt is None or raw.nbytes != int(np.prod(shape)) * np.dtype(dt).itemsize:
        return raw
    return raw.view(dt).reshape(shape)
