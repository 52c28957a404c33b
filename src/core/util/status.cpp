// status.cpp — bk_status helpers and the core's version information.
#include "batchkit/core.h"
#include "batchkit/status.h"

#include <hiredis/hiredis.h>
#include <librdkafka/rdkafka.h>

#define BK_STR2(x) #x
#define BK_STR(x) BK_STR2(x)

extern "C" {

void bk_status_clear(bk_status *st) {
    if (st) {
        st->code = BK_OK;
        st->message[0] = '\0';
    }
}

const char *bk_core_version(void) { return "0.2.0"; }

const char *bk_core_librdkafka_version(void) { return rd_kafka_version_str(); }

const char *bk_core_hiredis_version(void) {
    return BK_STR(HIREDIS_MAJOR) "." BK_STR(HIREDIS_MINOR) "." BK_STR(HIREDIS_PATCH);
}
}
