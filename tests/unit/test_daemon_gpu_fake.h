/* A fake CUDA driver for the GPU tier's tests: "device" memory is host
 * memory, each stream is a thread that runs its copies in order (with a
 * little random delay, so completion order varies), events complete when
 * their stream reaches them. It lets the tier's whole copy pipeline run,
 * under ASan too, on machines without a GPU. */
#ifndef KVTC_TEST_DAEMON_GPU_FAKE_H
#define KVTC_TEST_DAEMON_GPU_FAKE_H

#include <stdint.h>

#include "cuda_driver.h"

/* The table to hand to kvtcd__cuda_set_table. Device memory is limited to
 * 1 GiB in all (cuMemAlloc beyond: CUDA_ERROR_OUT_OF_MEMORY). */
const kvtcd_cuda *gpu_fake_table(void);
/* The n-th asynchronous copy from now (1 = the next) fails once with a
 * driver error; 0 disarms. */
void gpu_fake_fail_copy(int n);
/* Asynchronous copies asked for so far. */
int gpu_fake_copies(void);
/* Allocations, streams, events and host registrations not yet freed (0
 * after a clean close). */
int gpu_fake_live(void);
/* Asynchronous copies whose host buffer lay inside a registered range
 * (the tier's direct path: no staging buffer). */
int gpu_fake_direct_copies(void);
/* Bytes registered with cuMemHostRegister now. */
uint64_t gpu_fake_registered_bytes(void);
/* Unregisters of a range that was no longer mapped: its owner freed it
 * before the GPU tier let go (a real driver would fail or fault). */
int gpu_fake_bad_unregisters(void);
/* Nonzero: cuMemHostRegister fails (out of memory) until reset to 0. */
void gpu_fake_fail_register(int on);

#endif
