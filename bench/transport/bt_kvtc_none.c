/* Stand-in for bt_kvtc.c when libkvtc is not part of the build: the
 * benchmark then measures the baselines only. */
#include "bt.h"

#include <stddef.h>

const struct bt_backend *const bt_kvtc_backend = NULL;
