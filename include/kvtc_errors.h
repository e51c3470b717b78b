/* kvtc_errors.h - the one error idiom of kvtc.
 *
 * Every kvtc function that can fail returns int: 0 on success, a negative
 * KVTC_E* code on failure. kvtc_strerror() names a code. Codes are stable:
 * new ones are appended, never renumbered. */
#ifndef KVTC_ERRORS_H
#define KVTC_ERRORS_H

#ifdef __cplusplus
extern "C" {
#endif

enum kvtc_error {
    KVTC_OK = 0,
    KVTC_EINVAL = -1,      /* an argument is out of range or inconsistent */
    KVTC_ENOMEM = -2,      /* allocation failed */
    KVTC_EIO = -3,         /* a read, write or system call failed */
    KVTC_ECORRUPT = -4,    /* input fails a checksum, size or bound check */
    KVTC_EVERSION = -5,    /* unknown format or protocol version */
    KVTC_EPROFILE = -6,    /* profile missing or not the one the data needs */
    KVTC_ENOSPC = -7,      /* output buffer or store too small */
    KVTC_ENOTSUP = -8,     /* valid request this build or device cannot do */
    KVTC_ENOENT = -9,      /* key, file or object not found */
    KVTC_ETIMEDOUT = -10,  /* operation did not finish in time */
    KVTC_ECONN = -11,      /* connection failed or was lost */
    KVTC_EFULL = -12,      /* store full and nothing can be evicted */
    KVTC_EPERM = -13,      /* not allowed (tenant, pin, mode) */
    KVTC_EBUSY = -14,      /* resource in use; retry later */
    KVTC_EPROTO = -15,     /* peer broke the protocol */
    KVTC_ENUMERICAL = -16, /* a numerical routine (BLAS/LAPACK) failed */
    KVTC_ECANCELED = -17,  /* operation canceled (shutdown, disconnect) */
    KVTC_EEXIST = -18      /* object already exists */
};

/* Name of an error code ("KVTC_ECORRUPT: corrupt input"); never NULL. */
const char *kvtc_strerror(int err);

#ifdef __cplusplus
}
#endif
#endif
