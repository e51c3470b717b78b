#include "kvtc_errors.h"

const char *kvtc_strerror(int err)
{
    switch (err) {
    case KVTC_OK: return "success";
    case KVTC_EINVAL: return "invalid argument";
    case KVTC_ENOMEM: return "out of memory";
    case KVTC_EIO: return "I/O error";
    case KVTC_ECORRUPT: return "corrupt input";
    case KVTC_EVERSION: return "unsupported version";
    case KVTC_EPROFILE: return "profile missing or mismatched";
    case KVTC_ENOSPC: return "no space";
    case KVTC_ENOTSUP: return "not supported";
    case KVTC_ENOENT: return "not found";
    case KVTC_ETIMEDOUT: return "timed out";
    case KVTC_ECONN: return "connection error";
    case KVTC_EFULL: return "store full";
    case KVTC_EPERM: return "not permitted";
    case KVTC_EBUSY: return "busy";
    case KVTC_EPROTO: return "protocol error";
    case KVTC_ENUMERICAL: return "numerical error";
    case KVTC_ECANCELED: return "canceled";
    case KVTC_EEXIST: return "already exists";
    default: return "unknown error";
    }
}
