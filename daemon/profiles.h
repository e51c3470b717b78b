/* profiles.h - the daemon's codec profiles: registry, persistence, and the
 * encoder/decoder pools the codec jobs borrow from.
 *
 * A profile (.kvtcp, kvtc_codec.h) is the calibration of one layout. The
 * registry maps a profile id to a loaded profile; a put asking for
 * compression finds the profile of its layout (the newest upload wins when
 * several share one), a get decodes with the profile its container names.
 * With a data dir, each profile persists as <data_dir>/profiles/<id>.kvtcp
 * (16 lower-case hex digits), written atomically (temporary file, fsync,
 * rename) and loaded at start; a file that does not load is logged and
 * skipped. Without a data dir profiles live in memory only and are gone at
 * restart.
 *
 * Threads: the list is changed on the loop thread only, under a mutex so
 * that codec workers may look a profile up by id (kvtcd_profiles_get).
 * Entries are reference counted (atomically): a worker or an in-flight
 * send keeps a deleted profile alive until it lets go; the last reference
 * frees it on whatever thread drops it (nothing in an entry is tied to the
 * loop). Encoders and decoders are not thread-safe: the pools hand each
 * one to a single worker at a time. */
#ifndef KVTCD_PROFILES_H
#define KVTCD_PROFILES_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "kvtc_codec.h"

#define KVTCD_MAX_PROFILES 256
/* Largest .kvtcp accepted (upload or file): the bases of a wide model are
 * hundreds of MiB; more than this is not a profile we want in RAM. */
#define KVTCD_PROFILE_MAX_BYTES (1ull << 30)
/* Idle encoders/decoders kept per plan (more are freed when returned). */
#define KVTCD_PROFILE_POOL_MAX 8

typedef struct kvtcd_codec_obj {
    struct kvtcd_codec_obj *next;
    void *obj;                       /* kvtc_encoder * or kvtc_decoder * */
} kvtcd_codec_obj;

typedef struct kvtcd_profile_ent {
    struct kvtcd_profile_ent *next;  /* registry list, newest first */
    atomic_uint refs;                /* 1 for the registry + one per user */
    uint64_t id;
    uint64_t seq;                    /* upload order (newest wins) */
    kvtc_profile *p;
    uint8_t *bytes;                  /* the .kvtcp as uploaded or read */
    size_t len;
    uv_mutex_t mu;                   /* guards the pools */
    kvtcd_codec_obj *enc[KVTC_MAX_PLANS];
    uint32_t n_enc[KVTC_MAX_PLANS];
    kvtcd_codec_obj *dec;
    uint32_t n_dec;
} kvtcd_profile_ent;

typedef struct kvtcd_profiles {
    uv_mutex_t mu;                   /* guards head/count for workers */
    kvtcd_profile_ent *head;
    uint32_t count;
    uint32_t reserved;               /* uploads admitted, not added yet */
    uint64_t next_seq;
    char dir[1100];                  /* "" when profiles are not persisted */
    uint64_t loaded;                 /* files loaded at start */
    uint64_t load_errors;            /* files skipped at start */
} kvtcd_profiles;

/* Create the registry. data_dir NULL or "": memory only. Otherwise
 * <data_dir>/profiles is created if needed and every *.kvtcp in it loaded
 * (bad files are logged and skipped). Errors: KVTC_EIO (the directory
 * cannot be created or read), KVTC_ENOMEM. */
int kvtcd_profiles_init(kvtcd_profiles *r, const char *data_dir);
/* Drop the registry's references (entries still used elsewhere live on
 * until released). */
void kvtcd_profiles_fini(kvtcd_profiles *r);

/* Validate bytes (kvtc_profile_load, size limit) and build an entry with
 * one reference, not registered yet; the bytes are copied. Any thread.
 * Errors: KVTC_ENOSPC (over KVTCD_PROFILE_MAX_BYTES), as kvtc_profile_load
 * (KVTC_ECORRUPT, KVTC_EVERSION, KVTC_EINVAL, KVTC_ENOMEM). */
int kvtcd_profile_parse(const void *bytes, size_t len, kvtcd_profile_ent **out);
/* Write e's bytes to dir/<id>.kvtcp atomically. Any thread (blocking
 * I/O: call it off the loop). Errors: KVTC_EIO. */
int kvtcd_profile_persist(const char *dir, const kvtcd_profile_ent *e);

/* Register e (the registry takes the caller's reference). When a profile
 * with the same id is registered already, e is released and *out gets the
 * existing one; else *out = e. Loop thread. Errors: KVTC_ENOSPC
 * (KVTCD_MAX_PROFILES; e is released). */
int kvtcd_profiles_add(kvtcd_profiles *r, kvtcd_profile_ent *e,
                       kvtcd_profile_ent **out);
/* Admit an upload before its bytes are parsed or written: count +
 * reservations stay within KVTCD_MAX_PROFILES, so a profile is never
 * persisted and then refused (it would load at the next start). Release
 * with kvtcd_profiles_unreserve, just before kvtcd_profiles_add or when
 * the upload fails. Loop thread. Errors: KVTC_ENOSPC (the limit). */
int kvtcd_profiles_reserve(kvtcd_profiles *r);
void kvtcd_profiles_unreserve(kvtcd_profiles *r);
/* Unregister id and unlink its file. Loop thread. Errors: KVTC_ENOENT. */
int kvtcd_profiles_remove(kvtcd_profiles *r, uint64_t id);

/* The entry of id with a new reference (release it with
 * kvtcd_profile_unref), or NULL. Any thread. */
kvtcd_profile_ent *kvtcd_profiles_get(kvtcd_profiles *r, uint64_t id);
/* The newest profile whose layout equals l (every field), with a new
 * reference, or NULL. Any thread. */
kvtcd_profile_ent *kvtcd_profiles_for_layout(kvtcd_profiles *r,
                                             const kvtc_layout *l);
/* Up to max entries (newest first), each with a new reference; returns
 * how many. Loop thread. */
uint32_t kvtcd_profiles_list(kvtcd_profiles *r, kvtcd_profile_ent **out,
                             uint32_t max);

void kvtcd_profile_ref(kvtcd_profile_ent *e);
/* Drop a reference; the last one frees e (any thread). NULL is a no-op. */
void kvtcd_profile_unref(kvtcd_profile_ent *e);

/* The plan for target: the plan with the smallest ratio >= target, else
 * the highest ratio. */
uint32_t kvtcd_profile_pick_plan(const kvtc_profile *p, float target);

/* Borrow an encoder for plan (created when the pool is empty) and give it
 * back when done. Any thread. Errors: as kvtc_encoder_create. */
int kvtcd_profile_encoder_take(kvtcd_profile_ent *e, uint32_t plan,
                               kvtc_encoder **out);
void kvtcd_profile_encoder_give(kvtcd_profile_ent *e, uint32_t plan,
                                kvtc_encoder *enc);
int kvtcd_profile_decoder_take(kvtcd_profile_ent *e, kvtc_decoder **out);
void kvtcd_profile_decoder_give(kvtcd_profile_ent *e, kvtc_decoder *dec);

/* 1 when two layouts are equal in every field (as the codec compares). */
int kvtcd_layout_same(const kvtc_layout *a, const kvtc_layout *b);

#endif
