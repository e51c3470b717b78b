/* kvtcd through libkvtc: the store under test. Filled in once libkvtc's
 * blocking API exists; until then the benchmark runs the baselines only. */
#include "bt.h"

#include <stddef.h>

const struct bt_backend *const bt_kvtc_backend = NULL;
