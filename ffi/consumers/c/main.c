/* A program outside the repository, built against an installed libaiolock:
 *   cc main.c $(pkg-config --cflags --libs aiolock)
 * Usage: main VERSION. Takes a RedLock on the memory backend, sees the key held, releases
 * it, and checks that the library is VERSION. ffi/install-test.sh builds and runs it. */
#include <aiolock.h>
#include <stdio.h>
#include <string.h>

static int fail(const char *what, aiolock_status status) {
    fprintf(stderr, "c consumer: %s: %s: %s\n", what, aiolock_status_str(status), aiolock_last_error_message());
    return 1;
}

int main(int argc, char **argv) {
    if (argc != 2 || strcmp(aiolock_version(), argv[1]) != 0) {
        fprintf(stderr, "c consumer: libaiolock %s, expected %s\n", aiolock_version(), argc > 1 ? argv[1] : "?");
        return 1;
    }
    aiolock_cache *cache;
    aiolock_status status = aiolock_cache_open("memory://?namespace=consumer:", &cache);
    if (status != AIOLOCK_OK) return fail("open", status);
    aiolock_lock *lock;
    aiolock_outcome outcome;
    status = aiolock_acquire(cache, (const uint8_t *)"job", 3, 30.0, AIOLOCK_WAIT_DEFAULT, &lock, &outcome);
    if (status != AIOLOCK_OK) return fail("acquire", status);
    if (outcome != AIOLOCK_ACQUIRED) { fprintf(stderr, "c consumer: not acquired\n"); return 1; }
    aiolock_exclusive *other;
    status = aiolock_exclusive_try_acquire(cache, (const uint8_t *)"job", 3, 30.0, &other);
    if (status != AIOLOCK_OK) return fail("try_acquire", status);
    if (other != NULL) { fprintf(stderr, "c consumer: a held key was taken again\n"); return 1; }
    bool removed = false;
    status = aiolock_release(lock, &removed);
    if (status != AIOLOCK_OK) return fail("release", status);
    if (!removed) { fprintf(stderr, "c consumer: the release removed nothing\n"); return 1; }
    aiolock_cache_free(cache);
    printf("c: acquired, held, released (libaiolock %s)\n", aiolock_version());
    return 0;
}
