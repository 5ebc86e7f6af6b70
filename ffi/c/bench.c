/* The C side of ffi/bench.sh: memory-backend acquire + release through the C ABI,
 * the loop ffi/examples/bench.rs runs in Rust. Prints "ns_per_op <n>" (best of 5). */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "aiolock.h"

static double now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

int main(int argc, char **argv) {
    long iterations = argc > 1 ? atol(argv[1]) : 200000;
    aiolock_cache *cache;
    if (aiolock_cache_open("memory://", &cache) != AIOLOCK_OK) return 1;
    double best = 1e300;
    for (int round = 0; round < 5; round++) {
        double start = now_ns();
        for (long i = 0; i < iterations; i++) {
            aiolock_lock *lock;
            aiolock_outcome outcome;
            bool removed;
            if (aiolock_acquire(cache, (const uint8_t *)"bench", 5, 10.0, AIOLOCK_WAIT_DEFAULT,
                                &lock, &outcome) != AIOLOCK_OK ||
                aiolock_release(lock, &removed) != AIOLOCK_OK || !removed) {
                fprintf(stderr, "bench: %s\n", aiolock_last_error_message());
                return 1;
            }
        }
        double per_op = (now_ns() - start) / (double)iterations;
        if (per_op < best) best = per_op;
    }
    printf("ns_per_op %.1f\n", best);
    aiolock_cache_free(cache);
    return 0;
}
