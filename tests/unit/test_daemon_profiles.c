/* The profile registry's upload admission (issue #5): an upload takes a
 * slot before its bytes are parsed or written, so the 256-profile limit
 * refuses it before anything reaches the disk (a profile written and then
 * refused came back at the next start). */
#include <criterion/criterion.h>

#include "kvtc_errors.h"
#include "profiles.h"

Test(daemon_profiles, uploads_in_flight_count_against_the_limit)
{
    kvtcd_profiles r;
    cr_assert_eq(kvtcd_profiles_init(&r, NULL), 0);
    for (uint32_t i = 0; i < KVTCD_MAX_PROFILES; i++)
        cr_assert_eq(kvtcd_profiles_reserve(&r), 0, "slot %u", i);
    cr_assert_eq(r.count, 0, "nothing registered yet");
    /* Every slot is promised to an upload still in flight: refused now,
     * before any file could be written. */
    cr_assert_eq(kvtcd_profiles_reserve(&r), KVTC_ENOSPC);
    /* An upload that failed gives its slot back. */
    kvtcd_profiles_unreserve(&r);
    cr_assert_eq(kvtcd_profiles_reserve(&r), 0);
    cr_assert_eq(kvtcd_profiles_reserve(&r), KVTC_ENOSPC);
    for (uint32_t i = 0; i < KVTCD_MAX_PROFILES; i++)
        kvtcd_profiles_unreserve(&r);
    cr_assert_eq(r.reserved, 0);
    /* More releases than reservations do not wrap. */
    kvtcd_profiles_unreserve(&r);
    cr_assert_eq(r.reserved, 0);
    cr_assert_eq(kvtcd_profiles_reserve(&r), 0);
    kvtcd_profiles_unreserve(&r);
    kvtcd_profiles_fini(&r);
}
