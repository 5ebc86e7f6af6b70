/* The stampede pattern from C: one caller computes "report", the others wait for it;
 * then the exclusive lock.
 * Build: cc -std=c11 -Iinclude example.c -Ltarget/release -laiolock */
#include <stdio.h>
#include <string.h>

#include "aiolock.h"

int main(void) {
    aiolock_cache *cache;
    if (aiolock_cache_open("memory://?namespace=app:", &cache) != AIOLOCK_OK) {
        fprintf(stderr, "open: %s\n", aiolock_last_error_message());
        return 1;
    }
    aiolock_lock *lock;
    aiolock_outcome outcome;
    aiolock_status status = aiolock_acquire(cache, (const uint8_t *)"report", 6, 5.0,
                                            AIOLOCK_WAIT_DEFAULT, &lock, &outcome);
    if (status == AIOLOCK_OK) {
        if (outcome == AIOLOCK_ACQUIRED) /* we hold the lock: compute and store */
            status = aiolock_cache_set(cache, (const uint8_t *)"report", 6,
                                 (const uint8_t *)"42", 2, AIOLOCK_NO_EXPIRY);
        aiolock_release(lock, NULL); /* consumes the handle, whatever the outcome */
    }
    if (status != AIOLOCK_OK)
        fprintf(stderr, "%s: %s\n", aiolock_status_str(status), aiolock_last_error_message());
    uint8_t *value;
    size_t len;
    bool found;
    if (aiolock_cache_get(cache, (const uint8_t *)"report", 6, &value, &len, &found) == AIOLOCK_OK && found) {
        printf("report = %.*s\n", (int)len, (const char *)value);
        aiolock_buffer_free(value, len);
    }

    /* The exclusive lock: a mutex with a lease. Wait at most 10 s for it; a NULL
     * handle with AIOLOCK_OK means others held it all that time (not an error). */
    aiolock_exclusive *mutex;
    status = aiolock_exclusive_acquire(cache, (const uint8_t *)"account:42", 10, 30.0, 10.0, &mutex);
    if (status == AIOLOCK_OK && mutex != NULL) {
        /* ... read, change and write the account: no other caller is inside ... */
        bool removed; /* false: the lease had ended before the release */
        status = aiolock_exclusive_release(mutex, &removed);
    } else if (status == AIOLOCK_OK) {
        fprintf(stderr, "account:42 stayed locked by others\n");
    }
    if (status != AIOLOCK_OK)
        fprintf(stderr, "%s: %s\n", aiolock_status_str(status), aiolock_last_error_message());
    aiolock_cache_free(cache);
    return status == AIOLOCK_OK ? 0 : 1;
}
