/* codec_gpu.h - the GPU backend of the codec jobs (codec_jobs.h): compress
 * and decode many chunks per launch with libkvtc_gpu (include/kvtc_gpu.h).
 *
 * libkvtc_gpu.so is loaded at run time with dlopen, never linked: kvtcd
 * builds without nvcc and starts without CUDA, and a machine without the
 * library or a GPU simply compresses on the CPU. The library is looked up
 * as $KVTCD_GPU_CODEC_LIB when set (only there), else as ../lib/ next to
 * the running binary (the build and install layouts), else by the dynamic
 * loader's own search path. The CUDA driver comes from cuda_driver.h (the
 * same loader the GPU tier uses): its primary context of the device, one
 * non-blocking stream, device and pinned staging buffers that grow to the
 * largest batch seen.
 *
 * One run covers a job's items (encode and decode, any profiles): they are
 * grouped by (profile, plan), each group is one kvtc_gpu_encode or
 * kvtc_gpu_decode launch between one host-to-device and one device-to-host
 * copy. A kvtc_gpu_codec is cached per (profile, plan), with a reference on
 * the profile entry (the context reads the profile). The containers are the
 * CPU codec's (anything one encodes, the other decodes); decoded chunks are
 * within the plan's error bound, not bit-identical to the CPU's decode
 * (fp16 projections: kvtc_gpu.h).
 *
 * What the GPU does not do goes back to the caller for the CPU, item by
 * item (on_cpu set): raw and undecodable containers (the CPU's checks give
 * the same errors they always did), layouts the GPU path refuses, chunks
 * whose device status is not 0, and every item of a group whose launch or
 * copies failed. So a GPU error costs time, never a chunk.
 *
 * Threads: open and close on the loop thread; run on any one thread at a
 * time (the caller keeps at most one run in flight: the context's work
 * buffers and the stream are shared by its calls). */
#ifndef KVTCD_CODEC_GPU_H
#define KVTCD_CODEC_GPU_H

#include <stddef.h>
#include <stdint.h>

#include "codec_jobs.h"
#include "profiles.h"

/* Input bytes one GPU run takes at most (device memory it needs is about
 * twice that, plus the codec's work buffers). */
#define KVTCD_GPU_JOB_BYTES (256u << 20)
#define KVTCD_GPU_JOB_ITEMS 4096u
/* kvtc_gpu_codec contexts kept (least recently used goes first). */
#define KVTCD_GPU_CODECS 16u

typedef struct kvtcd_gpu_codec kvtcd_gpu_codec;

/* What one run did. */
typedef struct kvtcd_gpu_run_stats {
    uint32_t done;      /* items finished on the GPU (rc 0) */
    uint32_t to_cpu;    /* items handed back (on_cpu set) */
    uint32_t errors;    /* groups whose launch or copies failed */
    /* Where the run's time went (debug log lines, the dpath bench): host
     * staging of the inputs (buffer growth included), the device (copies
     * in and out, launches), the outputs (copy out of staging fused with
     * the reply checksum, allocations). */
    uint64_t stage_ns, device_ns, out_ns;
    uint64_t in_bytes, out_bytes;
} kvtcd_gpu_run_stats;

/* Load libkvtc_gpu and the CUDA driver, check the device (CUDA ordinal
 * device), retain its primary context and create the stream. reg is
 * borrowed (decode looks profiles up by id); it must outlive the backend.
 * Errors: KVTC_ENOTSUP (no library, a symbol missing, no usable GPU, a
 * driver failure) with why saying which, KVTC_ENOMEM. */
int kvtcd_gpu_codec_open(int device, kvtcd_profiles *reg,
                         kvtcd_gpu_codec **out, char *why, size_t why_len);
/* Wait for the stream, free the contexts, buffers and stream, release the
 * profile references. The library stays loaded (see codec_gpu.c). No run
 * may be in flight. NULL is a no-op. */
void kvtcd_gpu_codec_close(kvtcd_gpu_codec *g);

/* Code items[0..n) (ENCODE and DECODE only): each ends either done (rc 0,
 * out, out_len, sum; DECODE also info) or with on_cpu = 1 and rc, out
 * untouched for the CPU to do. Blocks until the device is done. Never
 * fails as a whole; rs says how it went. One thread at a time. */
void kvtcd_gpu_codec_run(kvtcd_gpu_codec *g, kvtcd_codec_item **items,
                         uint32_t n, kvtcd_gpu_run_stats *rs);

/* The projection GEMMs of the contexts made from now on (enum
 * kvtcd_gpu_projection, config.h: fp16, fp8 decode, fp8 both; the
 * default fp16); cached contexts are dropped when it changes. A profile
 * the fp8 GEMM refuses (row width not a multiple of 16) gets 16 bits. On
 * the thread that runs, with no run in flight. */
void kvtcd_gpu_codec_set_projection(kvtcd_gpu_codec *g, int proj);
/* The current one; fp16 for NULL. Any thread (a plain read). */
int kvtcd_gpu_codec_projection(const kvtcd_gpu_codec *g);

/* Tests only: the next n group launches fail with KVTC_EIO before reaching
 * the device (the fallback path on a healthy GPU). */
void kvtcd__gpu_codec_fail_next(kvtcd_gpu_codec *g, uint32_t n);

#endif
