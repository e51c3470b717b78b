/* kvtc codec calibrate | encode | decode | inspect: the codec on files.
 * (Filled in by the codec work; this placeholder reports "not built".) */
#include <stdio.h>

#include "cli.h"

int kvtc_cmd_codec(const struct kvtc_cli_global *g, int argc, char **argv)
{
    (void)g; (void)argc; (void)argv;
    fprintf(stderr, "kvtc codec: not implemented yet\n");
    return 1;
}
