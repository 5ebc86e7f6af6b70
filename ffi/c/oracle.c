/*
 * The C process of the cross-language exclusion oracle (tests/exclusive/mod.rs,
 * cross_process_oracle, run with this program by ffi/test.sh): THREADS threads take
 * the exclusive lock "mutex" of the cache at URL ENTRIES times each, through the C
 * ABI, and mark every entry and exit in the shared record FILE, as the Rust processes
 * do: one write(2) of "E ID.THREAD\n", then of "X ID.THREAD\n", on an O_APPEND file
 * (whole lines, in the order they happened, across processes). The Rust test checks
 * that the lines pair up: never two callers inside.
 *
 *   oracle URL FILE ID THREADS ENTRIES
 *
 * Exits 0 when every entry happened, 1 (with a message) otherwise.
 */
#define _POSIX_C_SOURCE 200809L
#include "aiolock.h"

#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char *file, *id;
static int entries;
static aiolock_cache *cache;

struct worker {
    int thread;
    int failed;
};

static int mark(int fd, char kind, int thread) {
    char line[128];
    int n = snprintf(line, sizeof line, "%c %s.%d\n", kind, id, thread);
    return write(fd, line, (size_t)n) == n ? 0 : -1;
}

static void *work(void *arg) {
    struct worker *w = arg;
    int fd = open(file, O_WRONLY | O_APPEND);
    if (fd < 0) {
        perror(file);
        w->failed = 1;
        return NULL;
    }
    for (int i = 0; i < entries && !w->failed; i++) {
        aiolock_exclusive *lock = NULL;
        aiolock_status status = AIOLOCK_OK;
        /* Every other entry tries once first: both ways of taking the lock. */
        if (i % 2 == 0) status = aiolock_exclusive_try_acquire(cache, (const uint8_t *)"mutex", 5, 30.0, &lock);
        if (status == AIOLOCK_OK && lock == NULL)
            status = aiolock_exclusive_acquire(cache, (const uint8_t *)"mutex", 5, 30.0, 120.0, &lock);
        if (status != AIOLOCK_OK || lock == NULL) {
            fprintf(stderr, "oracle %s.%d: %s: %s\n", id, w->thread,
                    status == AIOLOCK_OK ? "not acquired within 120 s" : aiolock_status_str(status),
                    aiolock_last_error_message());
            w->failed = 1;
            break;
        }
        if (mark(fd, 'E', w->thread) != 0) w->failed = 1;
        sched_yield();
        if (mark(fd, 'X', w->thread) != 0) w->failed = 1;
        bool removed = false;
        status = aiolock_exclusive_release(lock, &removed);
        if (status != AIOLOCK_OK || !removed) {
            fprintf(stderr, "oracle %s.%d: release: %s (removed: %d) %s\n", id, w->thread,
                    aiolock_status_str(status), removed, aiolock_last_error_message());
            w->failed = 1;
        }
    }
    close(fd);
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 6) {
        fprintf(stderr, "usage: oracle URL FILE ID THREADS ENTRIES\n");
        return 2;
    }
    file = argv[2];
    id = argv[3];
    int threads = atoi(argv[4]);
    entries = atoi(argv[5]);
    if (threads < 1 || threads > 64 || entries < 1) {
        fprintf(stderr, "oracle: bad THREADS or ENTRIES\n");
        return 2;
    }
    if (aiolock_cache_open(argv[1], &cache) != AIOLOCK_OK) {
        fprintf(stderr, "oracle: cannot open %s: %s\n", argv[1], aiolock_last_error_message());
        return 1;
    }
    pthread_t ts[64];
    struct worker ws[64];
    for (int t = 0; t < threads; t++) {
        ws[t] = (struct worker){t, 0};
        if (pthread_create(&ts[t], NULL, work, &ws[t]) != 0) {
            fprintf(stderr, "oracle: cannot start thread %d\n", t);
            return 1;
        }
    }
    int failed = 0;
    for (int t = 0; t < threads; t++) {
        pthread_join(ts[t], NULL);
        failed |= ws[t].failed;
    }
    aiolock_cache_free(cache);
    return failed;
}
