#include <criterion/criterion.h>
#include <string.h>

#include "kvtc_errors.h"

Test(errors, every_code_has_a_name)
{
    for (int e = 0; e >= KVTC_EEXIST; e--)
        cr_assert(strcmp(kvtc_strerror(e), "unknown error") != 0, "code %d", e);
    cr_assert_str_eq(kvtc_strerror(1), "unknown error");
}
