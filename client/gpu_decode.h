/* gpu_decode.h - libkvtc's decode of get containers on the caller's GPU
 * (gpu_decode.c), private to client/. */
#ifndef KVTC_CLIENT_GPU_DECODE_H
#define KVTC_CLIENT_GPU_DECODE_H

#include <stddef.h>

#include "kvtc.h"
#include "kvtc_codec.h"

/* Decode the transform-coded container at src (len bytes, host memory,
 * already inspected into ci) into dst, a CUDA device buffer of at least
 * ci->raw_bytes, on dst's GPU with libkvtc_gpu (loaded at run time), p
 * being the container's profile. Synchronous: dst holds the chunk on
 * return 0. Any error (no libkvtc_gpu, no context for this profile/plan/
 * device, a CUDA error, a status from the device) returns it and leaves
 * dst unspecified: the caller then decodes on the CPU, whose answer is
 * authoritative. */
int kvtc__gpu_decode(kvtc_conn *c, const kvtc_profile *p, const kvtc_container_info *ci,
                     const void *src, size_t len, void *dst);
/* Drop the GPU contexts made for p (before p itself is freed). */
void kvtc__gpu_forget(kvtc_conn *c, const kvtc_profile *p);
/* Free c's GPU contexts, streams and buffers (before its profiles). */
void kvtc__gpu_state_free(kvtc_conn *c);

#endif
