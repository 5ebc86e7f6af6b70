/* The waiter side of the cross-language test (ffi/test.sh): asks for a RedLock that a
 * process in another language holds, prints the outcome and the value it then reads.
 * Usage: wait URL KEY */
#include <stdio.h>
#include <string.h>

#include "aiolock.h"

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: wait URL KEY\n");
        return 2;
    }
    const uint8_t *key = (const uint8_t *)argv[2];
    size_t key_len = strlen(argv[2]);
    aiolock_cache *cache;
    aiolock_lock *lock;
    aiolock_outcome outcome;
    if (aiolock_cache_open(argv[1], &cache) != AIOLOCK_OK ||
        aiolock_acquire(cache, key, key_len, 30.0, AIOLOCK_WAIT_DEFAULT, &lock, &outcome) != AIOLOCK_OK) {
        fprintf(stderr, "wait: %s\n", aiolock_last_error_message());
        return 1;
    }
    aiolock_release(lock, NULL);
    uint8_t *value = NULL;
    size_t len = 0;
    bool found = false;
    if (aiolock_cache_get(cache, key, key_len, &value, &len, &found) != AIOLOCK_OK) {
        fprintf(stderr, "wait: %s\n", aiolock_last_error_message());
        return 1;
    }
    printf("%s %.*s\n",
           outcome == AIOLOCK_ACQUIRED ? "acquired" : outcome == AIOLOCK_RELEASED ? "released" : "timed_out",
           (int)len, found ? (const char *)value : "");
    aiolock_buffer_free(value, len);
    aiolock_cache_free(cache);
    return 0;
}
