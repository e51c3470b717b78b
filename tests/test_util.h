/* Shared helpers for the Criterion tests. */
#ifndef KVTC_TEST_UTIL_H
#define KVTC_TEST_UTIL_H

#include <stddef.h>

/* Path of a file under ../shared (KVTC_SHARED), or NULL when absent; the
 * caller skips with a clear message then. Returned string is static. */
const char *kvtc_test_shared_path(const char *rel);
/* Path of a built artifact under the build folder (KVTC_BUILD). */
const char *kvtc_test_build_path(const char *rel);
/* The folder for temporary files: $TMPDIR when set, else /tmp. */
const char *kvtc_test_tmpdir(void);
/* Write text into a new file under kvtc_test_tmpdir() (mkstemp) and return
 * its path (a static buffer, reused by the next call), or NULL on failure.
 * The caller unlinks it. */
char *kvtc_test_write_temp(const char *text);
/* Read a whole file; caller frees. NULL on failure. */
void *kvtc_test_read_file(const char *path, size_t *len);

#endif
