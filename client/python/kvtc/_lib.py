"""Finding and loading libkvtc.so, and declaring the prototypes we call.

The library is searched, first hit wins:
  1. $KVTC_LIB        the path of libkvtc.so itself;
  2. $KVTC_LIBDIR     a folder holding it;
  3. $KVTC_BUILD/lib  a build folder of this repository (make BUILD=...);
  4. build/lib        of the repository this package sits in
                      (client/python/kvtc -> ../../..);
  5. the system's     ctypes.util.find_library("kvtc") (make install).
A wrong guess is an error naming every place tried, never a silent fallback
to some other copy: tests must run the library they were built with.

find_library() takes any library name, so other ctypes bindings of this
repository (bench/quality/hf/kvtc_codec.py) can share the search order.
"""

import ctypes as C
import ctypes.util
import os

from . import _types as T

_REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))


def candidates(name="libkvtc.so"):
    """The paths find_library() tries for name, in order (for messages)."""
    out = []
    if name == "libkvtc.so" and os.environ.get("KVTC_LIB"):
        out.append(os.environ["KVTC_LIB"])
    if os.environ.get("KVTC_LIBDIR"):
        out.append(os.path.join(os.environ["KVTC_LIBDIR"], name))
    if os.environ.get("KVTC_BUILD"):
        out.append(os.path.join(os.environ["KVTC_BUILD"], "lib", name))
    out.append(os.path.join(_REPO, "build", "lib", name))
    return out


def find_library(name="libkvtc.so"):
    """Path of the first existing candidate, else the system's copy.

    Raises OSError listing every place tried when none exists."""
    explicit = os.environ.get("KVTC_LIB") if name == "libkvtc.so" else None
    # An explicit path that points nowhere is a mistake to report, not a
    # reason to pick up an unrelated build further down the list.
    if explicit and not os.path.isfile(explicit):
        raise OSError("KVTC_LIB=%s: no such file" % explicit)
    tried = candidates(name)
    for path in tried:
        if os.path.isfile(path):
            return path
    stem = name[3:] if name.startswith("lib") else name
    system = ctypes.util.find_library(stem.split(".so")[0])
    if system:
        return system
    raise OSError("%s not found; tried %s and the system's library path "
                  "(set KVTC_LIB or KVTC_BUILD, or build with make)"
                  % (name, ", ".join(tried)))


def _proto(lib, name, restype, argtypes):
    f = getattr(lib, name)
    f.restype = restype
    f.argtypes = argtypes


def _declare(lib):
    vp, sz, u32, i32 = C.c_void_p, C.c_size_t, C.c_uint32, C.c_int
    KP = C.POINTER(T.Key)
    conn = vp
    OPP = C.POINTER(T.OpParams)
    i32p, szp, u32p = C.POINTER(i32), C.POINTER(sz), C.POINTER(u32)
    _proto(lib, "kvtc_strerror", C.c_char_p, [i32])
    _proto(lib, "kvtc_key_next", i32, [KP, vp, sz, u32p, sz, KP])
    _proto(lib, "kvtc_key_chain", i32, [KP, vp, sz, u32p, sz, u32, KP, sz, szp])
    _proto(lib, "kvtc_canonical_bytes", sz, [C.POINTER(T.EngineLayout), u32])
    _proto(lib, "kvtc_gather", i32, [C.POINTER(T.EngineLayout), u32, u32, vp, sz])
    _proto(lib, "kvtc_scatter", i32, [C.POINTER(T.EngineLayout), u32, u32, vp, sz])
    _proto(lib, "kvtc_layout_check", i32, [C.POINTER(T.Layout)])
    _proto(lib, "kvtc_chunk_bytes", sz, [C.POINTER(T.Layout), u32])
    _proto(lib, "kvtc_connect", i32, [C.c_char_p, C.POINTER(T.ConnParams), C.POINTER(conn)])
    _proto(lib, "kvtc_disconnect", None, [conn])
    _proto(lib, "kvtc_last_error", C.c_char_p, [conn])
    _proto(lib, "kvtc_server_info_get", i32, [conn, C.POINTER(T.ServerInfo)])
    _proto(lib, "kvtc_put_batch", i32, [conn, C.POINTER(T.PutItem), sz, OPP])
    _proto(lib, "kvtc_get_batch", i32, [conn, C.POINTER(T.GetItem), sz, OPP])
    _proto(lib, "kvtc_lookup", i32, [conn, KP, sz, OPP, szp, u32p])
    for op in ("kvtc_delete", "kvtc_pin", "kvtc_unpin"):
        _proto(lib, op, i32, [conn, KP, sz, OPP, i32p])
    _proto(lib, "kvtc_stats_get", i32, [conn, OPP, C.POINTER(T.Stats)])
    PIP = C.POINTER(T.ProfileInfo)
    _proto(lib, "kvtc_profile_upload", i32, [conn, vp, sz, OPP, PIP])
    _proto(lib, "kvtc_profile_list", i32, [conn, OPP, PIP, sz, szp])
    _proto(lib, "kvtc_profile_delete", i32, [conn, C.c_uint64, OPP])
    _proto(lib, "kvtc_inspect", i32, [vp, sz, C.POINTER(T.ContainerInfo)])
    _proto(lib, "kvtc_mem_alloc", i32, [conn, sz, C.POINTER(vp)])
    _proto(lib, "kvtc_mem_free", i32, [conn, vp])
    _proto(lib, "kvtc_mem_shared", i32, [conn, vp])


_lib = None


def lib():
    """libkvtc.so with every prototype this package calls declared (loaded
    once per process; later calls return the same handle)."""
    global _lib
    if _lib is None:
        handle = C.CDLL(find_library())
        _declare(handle)
        _lib = handle
    return _lib
