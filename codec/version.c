#include "kvtc_codec.h"

const char *kvtc_version_string(void) { return KVTC_VERSION; }
