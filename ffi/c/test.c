/*
 * The C test suite of libaiolock, against the cache $AIOLOCK_TEST_URL names
 * (memory:// by default; each test opens its own namespace). Built by ffi/test.sh with
 * -std=c11 -Wall -Wextra -Werror, run under ASan + UBSan and valgrind, linked
 * against the static and the shared library. Needs a library built with the cargo
 * feature test-panic (for aiolock_test_panic).
 */
#define _POSIX_C_SOURCE 200809L
#define AIOLOCK_TEST_PANIC 1
#include "aiolock.h"

#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int passed, failed;

#define CHECK(cond)                                                                 \
    do {                                                                            \
        if (cond) {                                                                 \
            passed++;                                                               \
        } else {                                                                    \
            failed++;                                                               \
            fprintf(stderr, "%s:%d: CHECK failed: %s (last error: %s)\n", __FILE__, \
                    __LINE__, #cond, aiolock_last_error_message());                 \
        }                                                                           \
    } while (0)

#define KEY(s) (const uint8_t *)(s), strlen(s)

static void sleep_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Polls until exactly `n` callers of `cache` wait for the lock on `key`
 * (aiolock_cache_waiting): the ordering hook of the tests, instead of a sleep that
 * hopes the other thread got there. False after a generous limit (30 s). */
static bool wait_for_waiters(const aiolock_cache *cache, const char *key, size_t n) {
    struct timespec start, now;
    clock_gettime(CLOCK_MONOTONIC, &start);
    size_t count = 0;
    for (;;) {
        if (aiolock_cache_waiting(cache, KEY(key), &count) != AIOLOCK_OK) return false;
        if (count == n) return true;
        clock_gettime(CLOCK_MONOTONIC, &now);
        if (now.tv_sec - start.tv_sec > 30) break;
        sleep_ms(1);
    }
    fprintf(stderr, "%zu callers waited for %s, not %zu\n", count, key, n);
    return false;
}

/* The cache under test: $AIOLOCK_TEST_URL, memory:// by default. */
static const char *test_url(void) {
    const char *url = getenv("AIOLOCK_TEST_URL");
    return url && *url ? url : "memory://";
}

/* memcached keeps TTLs in whole seconds: short leases and TTLs take longer there. */
static double short_secs(void) { return strncmp(test_url(), "memcached", 9) == 0 ? 1.0 : 0.05; }
/* How long after its short TTL a key may still live: memcached sends a TTL of
 * ceil(ttl + 0.25) + 2 whole seconds on its coarse clock (a key lives less than
 * ttl + 4.5 s), so that a lease is a floor. */
static long expiry_slack_ms(void) { return strncmp(test_url(), "memcached", 9) == 0 ? 5000 : 500; }

/* Polls until `key` is gone (its short TTL ended); false if it outlives the slack. */
static bool wait_until_gone(const aiolock_cache *cache, const char *key) {
    long waited = 0, limit = (long)(short_secs() * 1000) + expiry_slack_ms();
    for (;;) {
        uint8_t *value = NULL;
        size_t len = 0;
        bool found = true;
        if (aiolock_cache_get(cache, KEY(key), &value, &len, &found) != AIOLOCK_OK) return false;
        aiolock_buffer_free(value, len);
        if (!found) return true;
        if (waited > limit) return false;
        sleep_ms(10);
        waited += 10;
    }
}

/* Opens the cache under test in a namespace of its own, so that leftovers on a shared
 * server never meet a test. */
static aiolock_cache *open_cache(void) {
    static atomic_int opened;
    char url[1024];
    const char *base = test_url();
    snprintf(url, sizeof url, "%s%cnamespace=c%ld-%d:", base, strchr(base, '?') ? '&' : '?',
             (long)getpid(), atomic_fetch_add(&opened, 1));
    aiolock_cache *cache = NULL;
    if (aiolock_cache_open(url, &cache) != AIOLOCK_OK) {
        fprintf(stderr, "cannot open %s: %s\n", url, aiolock_last_error_message());
        exit(2);
    }
    return cache;
}

static void test_version_and_status_texts(void) {
    CHECK(strlen(aiolock_version()) > 0);
    CHECK(strcmp(aiolock_status_str(AIOLOCK_OK), "ok") == 0);
    CHECK(strcmp(aiolock_status_str(AIOLOCK_CONFLICT), "optimistic lock conflict") == 0);
    CHECK(strcmp(aiolock_status_str(AIOLOCK_PANIC), "panic in aiolock") == 0);
    CHECK(strcmp(aiolock_status_str(-1), "unknown status") == 0);
    CHECK(strcmp(aiolock_status_str(12345), "unknown status") == 0);
}

static void test_open(void) {
    aiolock_cache *cache = (aiolock_cache *)0x1; /* sentinel: must stay untouched */
    CHECK(aiolock_cache_open(NULL, &cache) == AIOLOCK_INVALID_ARGUMENT);
    CHECK(cache == (aiolock_cache *)0x1);
    CHECK(strstr(aiolock_last_error_message(), "url") != NULL);
    CHECK(aiolock_cache_open("memory://", NULL) == AIOLOCK_INVALID_ARGUMENT);
    CHECK(aiolock_cache_open("memory://?namespace=\xff\xfe", &cache) == AIOLOCK_INVALID_ARGUMENT);
    CHECK(strstr(aiolock_last_error_message(), "UTF-8") != NULL);
    CHECK(aiolock_cache_open("nosuch://x", &cache) == AIOLOCK_INVALID_ARGUMENT);
    CHECK(aiolock_cache_open("memory://?bogus=1", &cache) == AIOLOCK_INVALID_ARGUMENT);
    CHECK(cache == (aiolock_cache *)0x1);
    CHECK(aiolock_cache_open("memory://", &cache) == AIOLOCK_OK);
    CHECK(strcmp(aiolock_last_error_message(), "") == 0);
    aiolock_cache_free(cache);
    aiolock_cache_free(NULL);
}

static void test_get_set_add_delete(void) {
    aiolock_cache *cache = open_cache();
    uint8_t *value = NULL;
    size_t len = 0;
    bool found = true, added = false, deleted = false;

    CHECK(aiolock_cache_get(cache, KEY("k"), &value, &len, &found) == AIOLOCK_OK);
    CHECK(!found && value == NULL && len == 0);

    const uint8_t bin[] = {'a', 0, 'b', 0xff};
    CHECK(aiolock_cache_set(cache, KEY("k"), bin, sizeof bin, AIOLOCK_NO_EXPIRY) == AIOLOCK_OK);
    CHECK(aiolock_cache_get(cache, KEY("k"), &value, &len, &found) == AIOLOCK_OK);
    CHECK(found && len == sizeof bin && memcmp(value, bin, len) == 0);
    aiolock_buffer_free(value, len);
    aiolock_buffer_free(NULL, 0);

    CHECK(aiolock_cache_add(cache, KEY("k"), bin, 1, 10.0, &added) == AIOLOCK_OK);
    CHECK(!added);
    CHECK(aiolock_cache_add(cache, KEY("fresh"), NULL, 0, 10.0, &added) == AIOLOCK_OK);
    CHECK(added);
    /* An empty value is found, with no buffer. */
    CHECK(aiolock_cache_get(cache, KEY("fresh"), &value, &len, &found) == AIOLOCK_OK);
    CHECK(found && value == NULL && len == 0);

    CHECK(aiolock_cache_delete(cache, KEY("k"), &deleted) == AIOLOCK_OK);
    CHECK(deleted);
    CHECK(aiolock_cache_delete(cache, KEY("k"), &deleted) == AIOLOCK_OK);
    CHECK(!deleted);

    /* TTLs: a short one expires. */
    CHECK(aiolock_cache_set(cache, KEY("short"), KEY("v"), short_secs()) == AIOLOCK_OK);
    CHECK(wait_until_gone(cache, "short"));
    aiolock_cache_free(cache);
}

static void test_outcomes(void) {
    aiolock_cache *cache = open_cache();
    aiolock_lock *held = NULL, *other = NULL;
    aiolock_outcome outcome = 0;
    bool removed = false;

    CHECK(aiolock_acquire(cache, KEY("o"), 5.0, AIOLOCK_WAIT_DEFAULT, &held, &outcome) == AIOLOCK_OK);
    CHECK(outcome == AIOLOCK_ACQUIRED);

    /* wait 0: try once, do not wait. */
    CHECK(aiolock_acquire(cache, KEY("o"), 5.0, 0.0, &other, &outcome) == AIOLOCK_OK);
    CHECK(outcome == AIOLOCK_TIMED_OUT);
    /* A handle that does not hold the lock releases nothing, and is consumed. */
    CHECK(aiolock_release(other, &removed) == AIOLOCK_OK);
    CHECK(!removed);

    /* A short wait bound times out while the holder keeps its lease. */
    CHECK(aiolock_acquire(cache, KEY("o"), 5.0, 0.05, &other, &outcome) == AIOLOCK_OK);
    CHECK(outcome == AIOLOCK_TIMED_OUT);
    CHECK(aiolock_release(other, NULL) == AIOLOCK_OK); /* removed_out is optional */

    CHECK(aiolock_release(held, &removed) == AIOLOCK_OK);
    CHECK(removed);
    held = NULL; /* consumed: the only way to "release twice" is with NULL */
    CHECK(aiolock_release(held, &removed) == AIOLOCK_INVALID_ARGUMENT);
    aiolock_cache_free(cache);
}

struct waiter {
    aiolock_cache *cache;
    aiolock_status status;
    aiolock_outcome outcome;
};

static void *wait_for_o(void *arg) {
    struct waiter *w = arg;
    aiolock_lock *lock = NULL;
    w->status = aiolock_acquire(w->cache, KEY("r"), 5.0, AIOLOCK_WAIT_DEFAULT, &lock, &w->outcome);
    if (w->status == AIOLOCK_OK) aiolock_release(lock, NULL);
    return NULL;
}

static void *wait_for_w(void *arg) {
    struct waiter *w = arg;
    aiolock_lock *lock = NULL;
    w->status = aiolock_acquire(w->cache, KEY("w"), 30.0, AIOLOCK_WAIT_DEFAULT, &lock, &w->outcome);
    if (w->status == AIOLOCK_OK) aiolock_release(lock, NULL);
    return NULL;
}

static void test_released_outcome(void) {
    aiolock_cache *cache = open_cache();
    aiolock_lock *held = NULL;
    aiolock_outcome outcome = 0;
    CHECK(aiolock_acquire(cache, KEY("r"), 5.0, AIOLOCK_WAIT_DEFAULT, &held, &outcome) == AIOLOCK_OK);
    struct waiter w = {cache, -1, 0};
    pthread_t t;
    pthread_create(&t, NULL, wait_for_o, &w);
    CHECK(wait_for_waiters(cache, "r", 1)); /* release only once it waits */
    bool removed = false;
    CHECK(aiolock_release(held, &removed) == AIOLOCK_OK && removed);
    pthread_join(t, NULL);
    CHECK(w.status == AIOLOCK_OK);
    CHECK(w.outcome == AIOLOCK_RELEASED);
    aiolock_cache_free(cache);
}

/* aiolock_cache_waiting counts the callers that wait, only while they wait, per key,
 * and refuses NULL like every function, writing nothing then. */
static void test_waiting(void) {
    aiolock_cache *cache = open_cache();
    size_t count = 7;
    CHECK(aiolock_cache_waiting(cache, KEY("w"), &count) == AIOLOCK_OK && count == 0);
    aiolock_lock *held = NULL, *other = NULL;
    aiolock_outcome outcome = 0;
    CHECK(aiolock_acquire(cache, KEY("w"), 30.0, AIOLOCK_WAIT_DEFAULT, &held, &outcome) == AIOLOCK_OK);
    CHECK(aiolock_cache_waiting(cache, KEY("w"), &count) == AIOLOCK_OK && count == 0);
    struct waiter w = {cache, -1, 0};
    pthread_t t;
    pthread_create(&t, NULL, wait_for_w, &w);
    CHECK(wait_for_waiters(cache, "w", 1));
    CHECK(aiolock_cache_waiting(cache, KEY("other"), &count) == AIOLOCK_OK && count == 0);
    CHECK(aiolock_cache_waiting(cache, NULL, 0, &count) == AIOLOCK_OK && count == 0); /* empty key */
    CHECK(aiolock_release(held, NULL) == AIOLOCK_OK);
    pthread_join(t, NULL);
    CHECK(w.status == AIOLOCK_OK && w.outcome == AIOLOCK_RELEASED);
    CHECK(aiolock_cache_waiting(cache, KEY("w"), &count) == AIOLOCK_OK && count == 0);
    /* A waiter whose bound passed is no longer counted. */
    CHECK(aiolock_acquire(cache, KEY("w"), 30.0, 0.0, &held, &outcome) == AIOLOCK_OK);
    CHECK(aiolock_acquire(cache, KEY("w"), 30.0, 0.02, &other, &outcome) == AIOLOCK_OK);
    CHECK(outcome == AIOLOCK_TIMED_OUT);
    CHECK(aiolock_cache_waiting(cache, KEY("w"), &count) == AIOLOCK_OK && count == 0);
    CHECK(aiolock_release(other, NULL) == AIOLOCK_OK);
    CHECK(aiolock_release(held, NULL) == AIOLOCK_OK);

    /* Errors: NULL cache, NULL key with a length, NULL output; the output untouched. */
    const aiolock_status BAD = AIOLOCK_INVALID_ARGUMENT;
    count = 7;
    CHECK(aiolock_cache_waiting(NULL, KEY("w"), &count) == BAD);
    CHECK(strstr(aiolock_last_error_message(), "cache") != NULL);
    CHECK(aiolock_cache_waiting(cache, NULL, 1, &count) == BAD);
    CHECK(strstr(aiolock_last_error_message(), "key") != NULL);
    CHECK(aiolock_cache_waiting(cache, KEY("w"), NULL) == BAD);
    CHECK(strstr(aiolock_last_error_message(), "count_out") != NULL);
    CHECK(count == 7);
    aiolock_cache_free(cache);
}

static void test_stale_release_is_owner_checked(void) {
    aiolock_cache *cache = open_cache();
    aiolock_lock *stale = NULL, *current = NULL, *probe = NULL;
    aiolock_outcome outcome = 0;
    bool removed = true;
    CHECK(aiolock_acquire(cache, KEY("s"), short_secs(), 0.0, &stale, &outcome) == AIOLOCK_OK);
    CHECK(outcome == AIOLOCK_ACQUIRED);
    CHECK(wait_until_gone(cache, "s-lock")); /* the lease ends */
    CHECK(aiolock_acquire(cache, KEY("s"), 5.0, 0.0, &current, &outcome) == AIOLOCK_OK);
    CHECK(outcome == AIOLOCK_ACQUIRED);
    /* The stale holder's release must not remove the current holder's lock. */
    CHECK(aiolock_release(stale, &removed) == AIOLOCK_OK);
    CHECK(!removed);
    CHECK(aiolock_acquire(cache, KEY("s"), 5.0, 0.0, &probe, &outcome) == AIOLOCK_OK);
    CHECK(outcome == AIOLOCK_TIMED_OUT);
    CHECK(aiolock_release(probe, NULL) == AIOLOCK_OK);
    CHECK(aiolock_release(current, &removed) == AIOLOCK_OK);
    CHECK(removed);
    aiolock_cache_free(cache);
}

static void test_optimistic(void) {
    aiolock_cache *cache = open_cache();
    aiolock_optimistic *lock = NULL;
    const uint8_t *value = NULL;
    size_t len = 0;
    bool found = false;

    CHECK(aiolock_cache_set(cache, KEY("c"), KEY("1"), AIOLOCK_NO_EXPIRY) == AIOLOCK_OK);
    CHECK(aiolock_optimistic_begin(cache, KEY("c"), &lock) == AIOLOCK_OK);
    CHECK(aiolock_optimistic_value(lock, &value, &len, &found) == AIOLOCK_OK);
    CHECK(found && len == 1 && value[0] == '1');
    CHECK(aiolock_cache_set(cache, KEY("c"), KEY("5"), AIOLOCK_NO_EXPIRY) == AIOLOCK_OK); /* another writer */
    CHECK(aiolock_cas(lock, KEY("2"), AIOLOCK_NO_EXPIRY) == AIOLOCK_CONFLICT);     /* consumed */
    CHECK(strstr(aiolock_last_error_message(), "changed") != NULL);

    CHECK(aiolock_optimistic_begin(cache, KEY("c"), &lock) == AIOLOCK_OK);
    CHECK(aiolock_cas(lock, KEY("6"), 10.0) == AIOLOCK_OK);
    uint8_t *got = NULL;
    size_t got_len = 0;
    CHECK(aiolock_cache_get(cache, KEY("c"), &got, &got_len, &found) == AIOLOCK_OK);
    CHECK(found && got_len == 1 && got[0] == '6');
    aiolock_buffer_free(got, got_len);

    /* Absent at begin: must still be absent. */
    CHECK(aiolock_optimistic_begin(cache, KEY("absent"), &lock) == AIOLOCK_OK);
    CHECK(aiolock_optimistic_value(lock, &value, &len, &found) == AIOLOCK_OK);
    CHECK(!found && value == NULL && len == 0);
    CHECK(aiolock_cache_add(cache, KEY("absent"), KEY("x"), AIOLOCK_NO_EXPIRY, &found) == AIOLOCK_OK);
    CHECK(aiolock_cas(lock, KEY("y"), AIOLOCK_NO_EXPIRY) == AIOLOCK_CONFLICT);

    /* Freed without a write. */
    CHECK(aiolock_optimistic_begin(cache, KEY("c"), &lock) == AIOLOCK_OK);
    aiolock_optimistic_free(lock);
    aiolock_optimistic_free(NULL);
    /* A bad TTL is refused, and the handle is still consumed. */
    CHECK(aiolock_optimistic_begin(cache, KEY("c"), &lock) == AIOLOCK_OK);
    CHECK(aiolock_cas(lock, KEY("z"), NAN) == AIOLOCK_INVALID_ARGUMENT);
    aiolock_cache_free(cache);
}

static void test_null_for_every_pointer(void) {
    aiolock_cache *cache = open_cache();
    aiolock_lock *lock = (aiolock_lock *)0x1;
    aiolock_optimistic *opt = (aiolock_optimistic *)0x1;
    aiolock_outcome outcome = 0;
    uint8_t *buf = (uint8_t *)0x1;
    const uint8_t *cbuf = (const uint8_t *)0x1;
    size_t len = 7;
    bool flag = true;
    const aiolock_status BAD = AIOLOCK_INVALID_ARGUMENT;

    /* acquire */
    CHECK(aiolock_acquire(NULL, KEY("k"), 1.0, -1.0, &lock, &outcome) == BAD);
    CHECK(aiolock_acquire(cache, NULL, 1, 1.0, -1.0, &lock, &outcome) == BAD);
    CHECK(aiolock_acquire(cache, KEY("k"), 1.0, -1.0, NULL, &outcome) == BAD);
    CHECK(aiolock_acquire(cache, KEY("k"), 1.0, -1.0, &lock, NULL) == BAD);
    CHECK(lock == (aiolock_lock *)0x1 && outcome == 0);
    /* release */
    CHECK(aiolock_release(NULL, &flag) == BAD);
    CHECK(aiolock_release(NULL, NULL) == BAD);
    /* optimistic */
    CHECK(aiolock_optimistic_begin(NULL, KEY("k"), &opt) == BAD);
    CHECK(aiolock_optimistic_begin(cache, NULL, 2, &opt) == BAD);
    CHECK(aiolock_optimistic_begin(cache, KEY("k"), NULL) == BAD);
    CHECK(opt == (aiolock_optimistic *)0x1);
    CHECK(aiolock_optimistic_value(NULL, &cbuf, &len, &flag) == BAD);
    CHECK(aiolock_cas(NULL, KEY("v"), 0.0) == BAD);
    aiolock_optimistic *real = NULL;
    CHECK(aiolock_optimistic_begin(cache, KEY("k"), &real) == AIOLOCK_OK);
    CHECK(aiolock_optimistic_value(real, NULL, &len, &flag) == BAD);
    CHECK(aiolock_optimistic_value(real, &cbuf, NULL, &flag) == BAD);
    CHECK(aiolock_optimistic_value(real, &cbuf, &len, NULL) == BAD);
    CHECK(cbuf == (const uint8_t *)0x1 && len == 7 && flag);
    CHECK(aiolock_cas(real, NULL, 3, 0.0) == BAD); /* consumed anyway */
    /* get / set / add / delete */
    CHECK(aiolock_cache_get(NULL, KEY("k"), &buf, &len, &flag) == BAD);
    CHECK(aiolock_cache_get(cache, NULL, 1, &buf, &len, &flag) == BAD);
    CHECK(aiolock_cache_get(cache, KEY("k"), NULL, &len, &flag) == BAD);
    CHECK(aiolock_cache_get(cache, KEY("k"), &buf, NULL, &flag) == BAD);
    CHECK(aiolock_cache_get(cache, KEY("k"), &buf, &len, NULL) == BAD);
    CHECK(buf == (uint8_t *)0x1 && len == 7 && flag);
    CHECK(aiolock_cache_set(NULL, KEY("k"), KEY("v"), 0.0) == BAD);
    CHECK(aiolock_cache_set(cache, NULL, 1, KEY("v"), 0.0) == BAD);
    CHECK(aiolock_cache_set(cache, KEY("k"), NULL, 1, 0.0) == BAD);
    CHECK(aiolock_cache_add(NULL, KEY("k"), KEY("v"), 0.0, &flag) == BAD);
    CHECK(aiolock_cache_add(cache, NULL, 1, KEY("v"), 0.0, &flag) == BAD);
    CHECK(aiolock_cache_add(cache, KEY("k"), NULL, 1, 0.0, &flag) == BAD);
    CHECK(aiolock_cache_add(cache, KEY("k"), KEY("v"), 0.0, NULL) == BAD);
    CHECK(aiolock_cache_delete(NULL, KEY("k"), &flag) == BAD);
    CHECK(aiolock_cache_delete(cache, NULL, 1, &flag) == BAD);
    CHECK(aiolock_cache_delete(cache, KEY("k"), NULL) == BAD);
    /* last error copy: NULL buffer only with length 0 */
    CHECK(aiolock_last_error_copy(NULL, 5, NULL) == BAD);
    /* Nothing was stored by any of the refused calls. */
    bool found = true;
    CHECK(aiolock_cache_get(cache, KEY("k"), &buf, &len, &found) == AIOLOCK_OK && !found);
    /* An empty key (NULL with length 0 is the empty string) is an invalid key. */
    CHECK(aiolock_acquire(cache, NULL, 0, 1.0, -1.0, &lock, &outcome) == AIOLOCK_INVALID_KEY);
    CHECK(aiolock_cache_set(cache, (const uint8_t *)"", 0, KEY("v"), 0.0) == AIOLOCK_INVALID_KEY);
    aiolock_cache_free(cache);
}

/* Every double argument gets the same checks: NaN, +/-infinity, subnormals and other
 * positive numbers below a nanosecond, and out-of-range numbers are refused; then each
 * argument's own rule for zero and negatives. */
static void test_bad_durations(void) {
    aiolock_cache *cache = open_cache();
    aiolock_lock *lock = NULL;
    aiolock_outcome outcome = 0;
    const double subnormal = 5e-324;
    const double always_bad[] = {NAN, -NAN, INFINITY, -INFINITY, subnormal, 1e-300, 1e-12, 1e300};
    const double bad_leases[] = {0.0, -0.0, -1.0, -subnormal};
    const double bad_ttls[] = {-1.0, -subnormal, -1e300};
    for (size_t i = 0; i < sizeof always_bad / sizeof *always_bad; i++) {
        double d = always_bad[i];
        CHECK(aiolock_acquire(cache, KEY("d"), d, -1.0, &lock, &outcome) == AIOLOCK_INVALID_ARGUMENT);
        CHECK(strstr(aiolock_last_error_message(), "lease_secs") != NULL);
        /* Compact: no hundreds of digits for 5e-324 or 1e300. */
        CHECK(strlen(aiolock_last_error_message()) < 160);
        CHECK(aiolock_acquire(cache, KEY("d"), 1.0, d, &lock, &outcome) == AIOLOCK_INVALID_ARGUMENT);
        CHECK(strstr(aiolock_last_error_message(), "wait_secs") != NULL);
        CHECK(aiolock_cache_set(cache, KEY("d"), KEY("v"), d) == AIOLOCK_INVALID_ARGUMENT);
        CHECK(strstr(aiolock_last_error_message(), "ttl_secs") != NULL);
        CHECK(aiolock_cache_add(cache, KEY("d"), KEY("v"), d, &(bool){false}) == AIOLOCK_INVALID_ARGUMENT);
        aiolock_optimistic *opt = NULL;
        CHECK(aiolock_optimistic_begin(cache, KEY("d"), &opt) == AIOLOCK_OK);
        CHECK(aiolock_cas(opt, KEY("v"), d) == AIOLOCK_INVALID_ARGUMENT);
    }
    for (size_t i = 0; i < sizeof bad_leases / sizeof *bad_leases; i++) {
        CHECK(aiolock_acquire(cache, KEY("d"), bad_leases[i], -1.0, &lock, &outcome) ==
              AIOLOCK_INVALID_ARGUMENT);
        CHECK(strstr(aiolock_last_error_message(), "lease_secs") != NULL);
    }
    for (size_t i = 0; i < sizeof bad_ttls / sizeof *bad_ttls; i++) {
        CHECK(aiolock_cache_set(cache, KEY("d"), KEY("v"), bad_ttls[i]) == AIOLOCK_INVALID_ARGUMENT);
    }
    CHECK(lock == NULL);
    bool found = true;
    uint8_t *buf = NULL;
    size_t len = 0;
    CHECK(aiolock_cache_get(cache, KEY("d"), &buf, &len, &found) == AIOLOCK_OK && !found);
    /* A negative finite wait is the default wait, -0.0 and 0 do not wait; the
     * smallest lease and TTL accepted are one nanosecond. */
    const double default_waits[] = {-1.0, -subnormal, -1e300};
    for (size_t i = 0; i < sizeof default_waits / sizeof *default_waits; i++) {
        CHECK(aiolock_acquire(cache, KEY("d"), 1.0, default_waits[i], &lock, &outcome) == AIOLOCK_OK);
        CHECK(outcome == AIOLOCK_ACQUIRED);
        CHECK(aiolock_release(lock, NULL) == AIOLOCK_OK);
    }
    CHECK(aiolock_acquire(cache, KEY("d"), 5.0, -0.0, &lock, &outcome) == AIOLOCK_OK);
    aiolock_lock *other = NULL;
    CHECK(aiolock_acquire(cache, KEY("d"), 5.0, -0.0, &other, &outcome) == AIOLOCK_OK);
    CHECK(outcome == AIOLOCK_TIMED_OUT);
    CHECK(aiolock_release(other, NULL) == AIOLOCK_OK);
    CHECK(aiolock_release(lock, NULL) == AIOLOCK_OK);
    if (strncmp(test_url(), "memcached", 9) != 0) { /* memcached counts whole seconds */
        CHECK(aiolock_acquire(cache, KEY("ns"), 1e-9, 0.0, &lock, &outcome) == AIOLOCK_OK);
        CHECK(aiolock_release(lock, NULL) == AIOLOCK_OK);
    }
    CHECK(aiolock_cache_set(cache, KEY("d"), KEY("v"), -0.0) == AIOLOCK_OK); /* no expiry */
    CHECK(aiolock_cache_get(cache, KEY("d"), &buf, &len, &found) == AIOLOCK_OK && found);
    aiolock_buffer_free(buf, len);
    aiolock_cache_free(cache);
}

/* The lock-key suffix is a URL option: a lock is stored under namespace + key +
 * lock_suffix, and two caches with different suffixes do not contend. */
static void test_lock_suffix(void) {
    char url[1024];
    const char *base = test_url();
    char sep = strchr(base, '?') ? '&' : '?';
    aiolock_cache *cache = NULL;
    snprintf(url, sizeof url, "%s%clock_suffix=", base, sep);
    CHECK(aiolock_cache_open(url, &cache) == AIOLOCK_INVALID_ARGUMENT);
    CHECK(strstr(aiolock_last_error_message(), "lock_suffix") != NULL);
    snprintf(url, sizeof url, "%s%clock_suffx=.l", base, sep);
    CHECK(aiolock_cache_open(url, &cache) == AIOLOCK_INVALID_ARGUMENT);
    CHECK(strstr(aiolock_last_error_message(), "lock_suffx") != NULL);

    aiolock_cache *plain = NULL, *dotted = NULL;
    snprintf(url, sizeof url, "%s%cnamespace=sfx%ld:&lock_suffix=.l", base, sep, (long)getpid());
    CHECK(aiolock_cache_open(url, &dotted) == AIOLOCK_OK);
    snprintf(url, sizeof url, "%s%cnamespace=sfx%ld:", base, sep, (long)getpid());
    CHECK(aiolock_cache_open(url, &plain) == AIOLOCK_OK);
    aiolock_lock *a = NULL, *b = NULL;
    aiolock_outcome outcome = 0;
    CHECK(aiolock_acquire(dotted, KEY("job"), 5.0, 0.0, &a, &outcome) == AIOLOCK_OK);
    CHECK(outcome == AIOLOCK_ACQUIRED);
    uint8_t *buf = NULL;
    size_t len = 0;
    bool found = false;
    CHECK(aiolock_cache_get(dotted, KEY("job.l"), &buf, &len, &found) == AIOLOCK_OK);
    CHECK(found && len > 0); /* the token */
    aiolock_buffer_free(buf, len);
    CHECK(aiolock_cache_get(dotted, KEY("job-lock"), &buf, &len, &found) == AIOLOCK_OK && !found);
    if (strncmp(base, "memory", 6) != 0) {
        /* Over a shared server: the default suffix is another lock. */
        CHECK(aiolock_acquire(plain, KEY("job"), 5.0, 0.0, &b, &outcome) == AIOLOCK_OK);
        CHECK(outcome == AIOLOCK_ACQUIRED);
        CHECK(aiolock_release(b, NULL) == AIOLOCK_OK);
    }
    bool removed = false;
    CHECK(aiolock_release(a, &removed) == AIOLOCK_OK && removed);
    aiolock_cache_free(dotted);
    aiolock_cache_free(plain);
}

static void *fail_in_thread(void *arg) {
    (void)arg;
    aiolock_cache *cache = NULL;
    aiolock_cache_open("nosuch://other-thread", &cache);
    return NULL;
}

static void test_last_error(void) {
    aiolock_cache *cache = NULL;
    CHECK(aiolock_cache_open("nosuch://here", &cache) == AIOLOCK_INVALID_ARGUMENT);
    const char *message = aiolock_last_error_message();
    CHECK(strstr(message, "nosuch://here") != NULL);

    /* Per thread: another thread's failure does not change ours. */
    pthread_t t;
    pthread_create(&t, NULL, fail_in_thread, NULL);
    pthread_join(t, NULL);
    CHECK(strstr(aiolock_last_error_message(), "nosuch://here") != NULL);

    /* Copy: the size, a truncated copy, a whole copy. */
    size_t needed = 0;
    CHECK(aiolock_last_error_copy(NULL, 0, &needed) == AIOLOCK_OK);
    CHECK(needed == strlen(aiolock_last_error_message()) + 1);
    char small[8];
    CHECK(aiolock_last_error_copy(small, sizeof small, &needed) == AIOLOCK_OK);
    CHECK(strlen(small) == 7 && strncmp(small, aiolock_last_error_message(), 7) == 0);
    char *whole = malloc(needed);
    CHECK(aiolock_last_error_copy(whole, needed, NULL) == AIOLOCK_OK);
    CHECK(strcmp(whole, aiolock_last_error_message()) == 0);
    free(whole);

    /* A success clears it. */
    CHECK(aiolock_cache_open("memory://", &cache) == AIOLOCK_OK);
    CHECK(strcmp(aiolock_last_error_message(), "") == 0);
    aiolock_cache_free(cache);
}

static void test_panic_returns_a_status(void) {
    CHECK(aiolock_test_panic() == AIOLOCK_PANIC);
    CHECK(strstr(aiolock_last_error_message(), "panicked") != NULL);
    /* The process and the library go on. */
    aiolock_cache *cache = open_cache();
    bool added = false;
    CHECK(aiolock_cache_add(cache, KEY("after-panic"), KEY("v"), 0.0, &added) == AIOLOCK_OK && added);
    aiolock_cache_free(cache);
}

static double elapsed_secs(const struct timespec *since) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)(now.tv_sec - since->tv_sec) + (double)(now.tv_nsec - since->tv_nsec) / 1e9;
}

/* Mutual exclusion across threads: each entry finds nobody inside, and every entry
 * happens (each thread waits as long as it takes). */
#define EXCLUSIVE_THREADS 8
#define EXCLUSIVE_ENTRIES 25

struct exclusive_worker {
    aiolock_cache *cache;
    atomic_int *inside;
    int entries, overlaps, failures, not_acquired;
    long *unprotected; /* incremented without atomics: only correct under the lock */
};

static void *exclusive_worker(void *arg) {
    struct exclusive_worker *w = arg;
    for (int i = 0; i < EXCLUSIVE_ENTRIES; i++) {
        aiolock_exclusive *lock = NULL;
        /* Every other entry tries first, then waits: both paths under contention. */
        aiolock_status status = AIOLOCK_OK;
        if (i % 2 == 0) status = aiolock_exclusive_try_acquire(w->cache, KEY("x"), 30.0, &lock);
        if (status == AIOLOCK_OK && lock == NULL)
            status = aiolock_exclusive_acquire(w->cache, KEY("x"), 30.0, 120.0, &lock);
        if (status != AIOLOCK_OK) {
            w->failures++;
            continue;
        }
        if (lock == NULL) {
            w->not_acquired++;
            continue;
        }
        if (atomic_fetch_add(w->inside, 1) != 0) w->overlaps++;
        long seen = *w->unprotected;
        sched_yield();
        *w->unprotected = seen + 1;
        atomic_fetch_sub(w->inside, 1);
        bool removed = false;
        if (aiolock_exclusive_release(lock, &removed) != AIOLOCK_OK || !removed) w->failures++;
        w->entries++;
    }
    return NULL;
}

static void test_exclusive_mutual_exclusion(void) {
    aiolock_cache *cache = open_cache();
    atomic_int inside = 0;
    long unprotected = 0;
    pthread_t threads[EXCLUSIVE_THREADS];
    struct exclusive_worker workers[EXCLUSIVE_THREADS];
    for (int i = 0; i < EXCLUSIVE_THREADS; i++) {
        workers[i] = (struct exclusive_worker){cache, &inside, 0, 0, 0, 0, &unprotected};
        pthread_create(&threads[i], NULL, exclusive_worker, &workers[i]);
    }
    int entries = 0, overlaps = 0, failures = 0, not_acquired = 0;
    for (int i = 0; i < EXCLUSIVE_THREADS; i++) {
        pthread_join(threads[i], NULL);
        entries += workers[i].entries;
        overlaps += workers[i].overlaps;
        failures += workers[i].failures;
        not_acquired += workers[i].not_acquired;
    }
    CHECK(overlaps == 0);
    CHECK(failures == 0);
    CHECK(not_acquired == 0);
    CHECK(entries == EXCLUSIVE_THREADS * EXCLUSIVE_ENTRIES);
    CHECK(unprotected == EXCLUSIVE_THREADS * EXCLUSIVE_ENTRIES);
    aiolock_cache_free(cache);
}

struct exclusive_waiter {
    aiolock_cache *cache;
    const char *key;
    double wait;
    aiolock_status status;
    atomic_bool held;
    aiolock_exclusive *lock;
};

static void *exclusive_waiter(void *arg) {
    struct exclusive_waiter *w = arg;
    w->status = aiolock_exclusive_acquire(w->cache, KEY(w->key), 30.0, w->wait, &w->lock);
    atomic_store(&w->held, w->lock != NULL);
    return NULL;
}

/* An exclusive waiter waits through the holder's release and ends up holding the lock
 * (where aiolock_acquire's waiter would return AIOLOCK_RELEASED without it); and it
 * waits through a lease that ends without a release. */
static void test_exclusive_waits_until_held(void) {
    aiolock_cache *cache = open_cache();
    aiolock_exclusive *held = NULL;
    CHECK(aiolock_exclusive_acquire(cache, KEY("e"), 30.0, 0.0, &held) == AIOLOCK_OK && held);
    struct exclusive_waiter w = {cache, "e", 60.0, -1, false, NULL};
    pthread_t t;
    pthread_create(&t, NULL, exclusive_waiter, &w);
    CHECK(wait_for_waiters(cache, "e", 1));
    CHECK(!atomic_load(&w.held));
    bool removed = false;
    CHECK(aiolock_exclusive_release(held, &removed) == AIOLOCK_OK && removed);
    pthread_join(t, NULL);
    CHECK(w.status == AIOLOCK_OK && w.lock != NULL);
    /* It holds it now: a RedLock caller on the same key does not get it. */
    aiolock_lock *redlock = NULL;
    aiolock_outcome outcome = 0;
    CHECK(aiolock_acquire(cache, KEY("e"), 5.0, 0.0, &redlock, &outcome) == AIOLOCK_OK);
    CHECK(outcome == AIOLOCK_TIMED_OUT);
    CHECK(aiolock_release(redlock, NULL) == AIOLOCK_OK);
    CHECK(aiolock_exclusive_release(w.lock, &removed) == AIOLOCK_OK && removed);

    /* A holder that never releases: its lease ends, and the waiter takes the lock. */
    aiolock_exclusive *stale = NULL;
    CHECK(aiolock_exclusive_acquire(cache, KEY("l"), short_secs(), 0.0, &stale) == AIOLOCK_OK && stale);
    struct exclusive_waiter l = {cache, "l", 60.0, -1, false, NULL};
    pthread_create(&t, NULL, exclusive_waiter, &l);
    pthread_join(t, NULL);
    CHECK(l.status == AIOLOCK_OK && l.lock != NULL);
    /* The stale holder's release leaves the new holder's lock alone. */
    CHECK(aiolock_exclusive_release(stale, &removed) == AIOLOCK_OK && !removed);
    aiolock_exclusive *probe = (aiolock_exclusive *)0x1;
    CHECK(aiolock_exclusive_try_acquire(cache, KEY("l"), 5.0, &probe) == AIOLOCK_OK && probe == NULL);
    CHECK(aiolock_exclusive_release(l.lock, &removed) == AIOLOCK_OK && removed);
    aiolock_cache_free(cache);
}

/* Try never waits; a wait bound returns by it, without the lock and without an error,
 * while the holder keeps its lease. */
static void test_exclusive_try_and_deadline(void) {
    aiolock_cache *cache = open_cache();
    aiolock_exclusive *held = NULL, *other = (aiolock_exclusive *)0x1;
    CHECK(aiolock_exclusive_try_acquire(cache, KEY("t"), 30.0, &held) == AIOLOCK_OK && held);
    struct timespec start;
    clock_gettime(CLOCK_MONOTONIC, &start);
    /* A try that waited would wait the 30 s lease (or its bound). */
    CHECK(aiolock_exclusive_try_acquire(cache, KEY("t"), 30.0, &other) == AIOLOCK_OK);
    CHECK(other == NULL);
    CHECK(strcmp(aiolock_last_error_message(), "") == 0); /* not an error */
    other = (aiolock_exclusive *)0x1;
    CHECK(aiolock_exclusive_acquire(cache, KEY("t"), 30.0, -0.0, &other) == AIOLOCK_OK);
    CHECK(other == NULL);
    CHECK(elapsed_secs(&start) < 5.0);

    const double bound = 0.3;
    clock_gettime(CLOCK_MONOTONIC, &start);
    other = (aiolock_exclusive *)0x1;
    CHECK(aiolock_exclusive_acquire(cache, KEY("t"), 30.0, bound, &other) == AIOLOCK_OK);
    double took = elapsed_secs(&start);
    CHECK(other == NULL);
    CHECK(took >= bound * 0.99);
    CHECK(took < bound + 5.0); /* by the bound, not by the 30 s lease */
    size_t count = 7;
    CHECK(aiolock_cache_waiting(cache, KEY("t"), &count) == AIOLOCK_OK && count == 0);
    bool removed = false;
    CHECK(aiolock_exclusive_release(held, &removed) == AIOLOCK_OK && removed);
    aiolock_cache_free(cache);
}

/* Every bad input: NULL pointers, keys, leases and wait bounds; the output is left
 * untouched and nothing is taken. */
static void test_exclusive_bad_inputs(void) {
    aiolock_cache *cache = open_cache();
    const aiolock_status BAD = AIOLOCK_INVALID_ARGUMENT;
    aiolock_exclusive *const SENTINEL = (aiolock_exclusive *)0x1;
    aiolock_exclusive *lock = SENTINEL;
    CHECK(aiolock_exclusive_acquire(NULL, KEY("b"), 5.0, 1.0, &lock) == BAD);
    CHECK(strstr(aiolock_last_error_message(), "cache") != NULL);
    CHECK(aiolock_exclusive_acquire(cache, NULL, 1, 5.0, 1.0, &lock) == BAD);
    CHECK(strstr(aiolock_last_error_message(), "key") != NULL);
    CHECK(aiolock_exclusive_acquire(cache, KEY("b"), 5.0, 1.0, NULL) == BAD);
    CHECK(strstr(aiolock_last_error_message(), "lock_out") != NULL);
    CHECK(aiolock_exclusive_try_acquire(NULL, KEY("b"), 5.0, &lock) == BAD);
    CHECK(aiolock_exclusive_try_acquire(cache, NULL, 1, 5.0, &lock) == BAD);
    CHECK(aiolock_exclusive_try_acquire(cache, KEY("b"), 5.0, NULL) == BAD);
    CHECK(aiolock_exclusive_acquire(cache, NULL, 0, 5.0, 1.0, &lock) == AIOLOCK_INVALID_KEY);
    CHECK(aiolock_exclusive_try_acquire(cache, (const uint8_t *)"", 0, 5.0, &lock) == AIOLOCK_INVALID_KEY);
    if (strncmp(test_url(), "memcached", 9) == 0) {
        CHECK(aiolock_exclusive_try_acquire(cache, KEY("a b"), 5.0, &lock) == AIOLOCK_INVALID_KEY);
    }
    const double subnormal = 5e-324;
    const double bad_durations[] = {NAN, -NAN, INFINITY, -INFINITY, subnormal, 1e-300, 1e-12, 1e300};
    for (size_t i = 0; i < sizeof bad_durations / sizeof *bad_durations; i++) {
        double d = bad_durations[i];
        CHECK(aiolock_exclusive_acquire(cache, KEY("b"), d, 1.0, &lock) == BAD);
        CHECK(strstr(aiolock_last_error_message(), "lease_secs") != NULL);
        CHECK(strlen(aiolock_last_error_message()) < 160);
        CHECK(aiolock_exclusive_try_acquire(cache, KEY("b"), d, &lock) == BAD);
        CHECK(aiolock_exclusive_acquire(cache, KEY("b"), 5.0, d, &lock) == BAD);
        CHECK(strstr(aiolock_last_error_message(), "wait_secs") != NULL);
        CHECK(strlen(aiolock_last_error_message()) < 160);
    }
    const double bad_leases[] = {0.0, -0.0, -1.0};
    for (size_t i = 0; i < sizeof bad_leases / sizeof *bad_leases; i++) {
        CHECK(aiolock_exclusive_acquire(cache, KEY("b"), bad_leases[i], 1.0, &lock) == BAD);
        CHECK(strstr(aiolock_last_error_message(), "lease_secs") != NULL);
    }
    /* A negative wait is no default here (unlike aiolock_acquire): refused. */
    const double negative_waits[] = {-1.0, AIOLOCK_WAIT_DEFAULT, -subnormal, -1e300};
    for (size_t i = 0; i < sizeof negative_waits / sizeof *negative_waits; i++) {
        CHECK(aiolock_exclusive_acquire(cache, KEY("b"), 5.0, negative_waits[i], &lock) == BAD);
        CHECK(strstr(aiolock_last_error_message(), "wait_secs must not be negative") != NULL);
    }
    CHECK(lock == SENTINEL);
    /* Release and free: NULL (the "not acquired" handle) is refused / ignored. */
    bool removed = true;
    CHECK(aiolock_exclusive_release(NULL, &removed) == BAD);
    CHECK(removed);
    CHECK(aiolock_exclusive_release(NULL, NULL) == BAD);
    aiolock_exclusive_free(NULL);
    /* Nothing was taken by the refused calls. */
    lock = NULL;
    CHECK(aiolock_exclusive_try_acquire(cache, KEY("b"), 5.0, &lock) == AIOLOCK_OK && lock != NULL);
    CHECK(aiolock_exclusive_release(lock, &removed) == AIOLOCK_OK && removed);
    aiolock_cache_free(cache);
}

/* Keys are bytes (not UTF-8 here); a freed handle releases its lock; the handle
 * outlives its cache. */
static void test_exclusive_bytes_and_free(void) {
    aiolock_cache *cache = open_cache();
    const uint8_t key[] = {0xff, 0xfe, 'k'};
    aiolock_exclusive *lock = NULL, *other = NULL;
    CHECK(aiolock_exclusive_try_acquire(cache, key, sizeof key, 30.0, &lock) == AIOLOCK_OK && lock);
    CHECK(aiolock_exclusive_try_acquire(cache, key, sizeof key, 30.0, &other) == AIOLOCK_OK && !other);
    /* Another key of other bytes is another lock. */
    const uint8_t other_key[] = {0xff, 0xfe, 'j'};
    CHECK(aiolock_exclusive_try_acquire(cache, other_key, sizeof other_key, 30.0, &other) == AIOLOCK_OK);
    CHECK(other != NULL);
    aiolock_exclusive_free(other); /* releases it */
    CHECK(aiolock_exclusive_try_acquire(cache, other_key, sizeof other_key, 30.0, &other) == AIOLOCK_OK);
    CHECK(other != NULL);
    aiolock_cache_free(cache); /* the handles stay valid */
    bool removed = false;
    CHECK(aiolock_exclusive_release(other, &removed) == AIOLOCK_OK && removed);
    CHECK(aiolock_exclusive_release(lock, &removed) == AIOLOCK_OK && removed);
}

/* The stampede oracle: many threads want one value; it is computed once. */
#define STAMPEDE_THREADS 16
static atomic_int computed;

struct stampede {
    aiolock_cache *cache;
    int ok;
    int others_waited; /* the computing thread: the others all waited for it */
};

static void *stampede_worker(void *arg) {
    struct stampede *s = arg;
    for (int attempt = 0; attempt < 100; attempt++) {
        uint8_t *value = NULL;
        size_t len = 0;
        bool found = false;
        if (aiolock_cache_get(s->cache, KEY("report"), &value, &len, &found) != AIOLOCK_OK) return NULL;
        if (found) {
            s->ok = len == 8 && memcmp(value, "computed", 8) == 0;
            aiolock_buffer_free(value, len);
            return NULL;
        }
        aiolock_lock *lock = NULL;
        aiolock_outcome outcome = 0;
        if (aiolock_acquire(s->cache, KEY("report"), 30.0, AIOLOCK_WAIT_DEFAULT, &lock, &outcome) != AIOLOCK_OK)
            return NULL;
        if (outcome == AIOLOCK_ACQUIRED) {
            /* Another thread may have computed between our get and our acquire. */
            if (aiolock_cache_get(s->cache, KEY("report"), &value, &len, &found) == AIOLOCK_OK && !found) {
                atomic_fetch_add(&computed, 1);
                /* The expensive part lasts until every other thread found the cache
                 * empty and waits for this one: nothing is stored before. */
                s->others_waited = wait_for_waiters(s->cache, "report", STAMPEDE_THREADS - 1);
                aiolock_cache_set(s->cache, KEY("report"), KEY("computed"), AIOLOCK_NO_EXPIRY);
            }
            aiolock_buffer_free(value, len);
        }
        aiolock_release(lock, NULL);
    }
    return NULL;
}

static void test_stampede(void) {
    aiolock_cache *cache = open_cache();
    pthread_t threads[STAMPEDE_THREADS];
    struct stampede args[STAMPEDE_THREADS];
    atomic_store(&computed, 0);
    for (int i = 0; i < STAMPEDE_THREADS; i++) {
        args[i] = (struct stampede){cache, 0, 0};
        pthread_create(&threads[i], NULL, stampede_worker, &args[i]);
    }
    int ok = 0, waited = 0;
    for (int i = 0; i < STAMPEDE_THREADS; i++) {
        pthread_join(threads[i], NULL);
        ok += args[i].ok;
        waited += args[i].others_waited;
    }
    CHECK(atomic_load(&computed) == 1);
    CHECK(waited == 1);
    CHECK(ok == STAMPEDE_THREADS);
    aiolock_cache_free(cache);
}

/* ---- The lease API: flags, fences, extend, the remaining lease, the watchdog ---- */

static bool is_memcached(void) { return strncmp(test_url(), "memcached", 9) == 0; }

static void test_lost_status(void) {
    CHECK(AIOLOCK_LOST == 11); /* a stable number */
    CHECK(strcmp(aiolock_status_str(AIOLOCK_LOST), "lock lost") == 0);
    CHECK(AIOLOCK_FENCED == 1 && AIOLOCK_WATCHDOG == 2);
}

/* Each fenced acquisition of a key gets a larger fence than the one before, through
 * both locks; an unfenced handle, or one that does not hold the lock, has none (0). */
static void test_fences_grow(void) {
    aiolock_cache *cache = open_cache();
    aiolock_lock *lock = NULL, *waiter = NULL;
    aiolock_exclusive *ex = NULL;
    aiolock_outcome outcome = 0;
    uint64_t fence = 7, previous = 0;
    bool has = false;
    for (int i = 0; i < 5; i++) {
        CHECK(aiolock_acquire_ex(cache, KEY("f"), 30.0, 0.0, AIOLOCK_FENCED, &lock, &outcome) == AIOLOCK_OK);
        CHECK(outcome == AIOLOCK_ACQUIRED);
        CHECK(aiolock_lock_fence(lock, &fence, &has) == AIOLOCK_OK);
        CHECK(has && fence > previous);
        previous = fence;
        /* A RedLock caller that does not get the lock has no fence. */
        CHECK(aiolock_acquire_ex(cache, KEY("f"), 30.0, 0.0, AIOLOCK_FENCED, &waiter, &outcome) == AIOLOCK_OK);
        CHECK(outcome == AIOLOCK_TIMED_OUT);
        fence = 7;
        has = true;
        CHECK(aiolock_lock_fence(waiter, &fence, &has) == AIOLOCK_OK);
        CHECK(!has && fence == 0);
        CHECK(aiolock_release(waiter, NULL) == AIOLOCK_OK);
        CHECK(aiolock_release(lock, NULL) == AIOLOCK_OK);
        CHECK(aiolock_exclusive_acquire_ex(cache, KEY("f"), 30.0, 5.0, AIOLOCK_FENCED, &ex) == AIOLOCK_OK && ex);
        CHECK(aiolock_exclusive_fence(ex, &fence, &has) == AIOLOCK_OK);
        CHECK(has && fence > previous);
        previous = fence;
        CHECK(aiolock_exclusive_release(ex, NULL) == AIOLOCK_OK);
    }
    /* Unfenced: none, through the _ex functions with 0 and the old ones alike. */
    CHECK(aiolock_acquire_ex(cache, KEY("f"), 30.0, 0.0, 0, &lock, &outcome) == AIOLOCK_OK);
    CHECK(outcome == AIOLOCK_ACQUIRED);
    has = true;
    CHECK(aiolock_lock_fence(lock, &fence, &has) == AIOLOCK_OK && !has && fence == 0);
    CHECK(aiolock_release(lock, NULL) == AIOLOCK_OK);
    CHECK(aiolock_exclusive_try_acquire(cache, KEY("f"), 30.0, &ex) == AIOLOCK_OK && ex);
    has = true;
    CHECK(aiolock_exclusive_fence(ex, &fence, &has) == AIOLOCK_OK && !has && fence == 0);
    CHECK(aiolock_exclusive_release(ex, NULL) == AIOLOCK_OK);
    /* The fence outlives the lock key's expiry: it still grows after a lease ended. */
    CHECK(aiolock_exclusive_acquire_ex(cache, KEY("f"), short_secs(), 0.0, AIOLOCK_FENCED, &ex) == AIOLOCK_OK && ex);
    CHECK(aiolock_exclusive_fence(ex, &fence, &has) == AIOLOCK_OK && has && fence > previous);
    previous = fence;
    CHECK(wait_until_gone(cache, "f-lock"));
    aiolock_exclusive *next = NULL;
    CHECK(aiolock_exclusive_acquire_ex(cache, KEY("f"), 30.0, 0.0, AIOLOCK_FENCED, &next) == AIOLOCK_OK && next);
    CHECK(aiolock_exclusive_fence(next, &fence, &has) == AIOLOCK_OK && has && fence > previous);
    bool removed = true;
    CHECK(aiolock_exclusive_release(ex, &removed) == AIOLOCK_OK && !removed); /* the stale one */
    CHECK(aiolock_exclusive_release(next, &removed) == AIOLOCK_OK && removed);
    aiolock_cache_free(cache);
}

/* Extend is owner-checked: it moves the lease end (also shorter), keeps the lock past
 * its first lease, and says AIOLOCK_LOST once the lock is gone or was never held. */
static void test_extend(void) {
    aiolock_cache *cache = open_cache();
    aiolock_lock *lock = NULL, *other = NULL;
    aiolock_outcome outcome = 0;
    double left = -1.0;
    CHECK(aiolock_acquire(cache, KEY("x"), 20.0, 0.0, &lock, &outcome) == AIOLOCK_OK);
    CHECK(outcome == AIOLOCK_ACQUIRED);
    CHECK(aiolock_lock_lease_remaining(lock, &left) == AIOLOCK_OK);
    CHECK(left > 10.0 && left <= 20.0);
    CHECK(aiolock_lock_extend(lock, 60.0) == AIOLOCK_OK);
    CHECK(aiolock_lock_lease_remaining(lock, &left) == AIOLOCK_OK);
    CHECK(left > 50.0 && left <= 60.0);
    /* A caller that did not get the lock cannot extend it, and has no lease left. */
    CHECK(aiolock_acquire(cache, KEY("x"), 5.0, 0.0, &other, &outcome) == AIOLOCK_OK);
    CHECK(outcome == AIOLOCK_TIMED_OUT);
    CHECK(aiolock_lock_extend(other, 5.0) == AIOLOCK_LOST);
    CHECK(strstr(aiolock_last_error_message(), "does not hold") != NULL);
    CHECK(aiolock_lock_lease_remaining(other, &left) == AIOLOCK_OK && left == 0.0);
    CHECK(aiolock_release(other, NULL) == AIOLOCK_OK);
    /* Shortened: the lease ends soon, the key goes, and extend then says Lost. */
    CHECK(aiolock_lock_extend(lock, short_secs()) == AIOLOCK_OK);
    CHECK(aiolock_lock_lease_remaining(lock, &left) == AIOLOCK_OK && left <= short_secs());
    CHECK(wait_until_gone(cache, "x-lock"));
    CHECK(aiolock_lock_lease_remaining(lock, &left) == AIOLOCK_OK && left == 0.0);
    CHECK(aiolock_lock_extend(lock, 5.0) == AIOLOCK_LOST);
    CHECK(strstr(aiolock_last_error_message(), "lock lost: ") == aiolock_last_error_message());
    /* Nothing was written: the key is still free, and the release removes nothing. */
    CHECK(aiolock_acquire(cache, KEY("x"), 5.0, 0.0, &other, &outcome) == AIOLOCK_OK);
    CHECK(outcome == AIOLOCK_ACQUIRED);
    CHECK(aiolock_lock_extend(lock, 5.0) == AIOLOCK_LOST); /* another caller's now */
    bool removed = true;
    CHECK(aiolock_release(lock, &removed) == AIOLOCK_OK && !removed);
    CHECK(aiolock_release(other, &removed) == AIOLOCK_OK && removed);

    /* The exclusive lock: extended past its first lease, nobody else gets it. */
    aiolock_exclusive *ex = NULL, *probe = (aiolock_exclusive *)0x1;
    const double first = short_secs() * 2;
    CHECK(aiolock_exclusive_try_acquire(cache, KEY("y"), first, &ex) == AIOLOCK_OK && ex);
    CHECK(aiolock_exclusive_extend(ex, 60.0) == AIOLOCK_OK);
    CHECK(aiolock_exclusive_lease_remaining(ex, &left) == AIOLOCK_OK && left > 50.0);
    /* Wait out the first lease (with the server's slack): the key is still ours. */
    sleep_ms((long)(first * 1000) + expiry_slack_ms());
    CHECK(aiolock_exclusive_try_acquire(cache, KEY("y"), 5.0, &probe) == AIOLOCK_OK && probe == NULL);
    CHECK(aiolock_exclusive_extend(ex, short_secs()) == AIOLOCK_OK);
    CHECK(wait_until_gone(cache, "y-lock"));
    CHECK(aiolock_exclusive_extend(ex, 5.0) == AIOLOCK_LOST);
    CHECK(aiolock_exclusive_lease_remaining(ex, &left) == AIOLOCK_OK && left == 0.0);
    CHECK(aiolock_exclusive_release(ex, &removed) == AIOLOCK_OK && !removed);
    aiolock_cache_free(cache);
}

/* What a loss callback saw: written on the watchdog thread, read by the test. */
struct loss {
    atomic_int calls;
    atomic_bool entered;
    int status;
    char message[512];
    pthread_t thread;
    long hold_ms;      /* how long the callback stays inside (the release must wait) */
    atomic_bool left;  /* set just before it returns */
};

static void on_loss(void *user_data, int status, const char *message) {
    struct loss *l = user_data;
    l->status = status;
    snprintf(l->message, sizeof l->message, "%s", message);
    l->thread = pthread_self();
    atomic_store(&l->entered, true);
    if (l->hold_ms > 0) sleep_ms(l->hold_ms);
    atomic_store(&l->left, true);
    atomic_fetch_add(&l->calls, 1);
}

static bool wait_for_flag(atomic_bool *flag, long limit_ms) {
    for (long waited = 0; !atomic_load(flag); waited++) {
        if (waited > limit_ms) return false;
        sleep_ms(1);
    }
    return true;
}

/* A lease the watchdog renews every third of it: memcached counts whole seconds. */
static double watch_lease(void) { return is_memcached() ? 1.0 : 0.3; }

/* The watchdog keeps the lock while the work lasts many leases (longer than memcached's
 * TTL slack too): another caller polling all along never gets it, and the check says
 * OK; after the release the key is free at once. */
static void test_watchdog_keeps_the_lock(void) {
    aiolock_cache *cache = open_cache();
    aiolock_exclusive *ex = NULL, *probe = NULL;
    aiolock_lock *lock = NULL, *waiter = NULL;
    aiolock_outcome outcome = 0;
    CHECK(aiolock_exclusive_acquire_ex(cache, KEY("k"), watch_lease(), 0.0, AIOLOCK_WATCHDOG, &ex) == AIOLOCK_OK && ex);
    CHECK(aiolock_acquire_ex(cache, KEY("r"), watch_lease(), 0.0, AIOLOCK_WATCHDOG | AIOLOCK_FENCED, &lock,
                             &outcome) == AIOLOCK_OK);
    CHECK(outcome == AIOLOCK_ACQUIRED);
    struct timespec start;
    clock_gettime(CLOCK_MONOTONIC, &start);
    const double work = watch_lease() * 4 + (double)expiry_slack_ms() / 1000;
    int taken = 0, checks_failed = 0, polls = 0;
    while (elapsed_secs(&start) < work) {
        probe = NULL;
        if (aiolock_exclusive_try_acquire(cache, KEY("k"), 5.0, &probe) != AIOLOCK_OK || probe) taken++;
        aiolock_exclusive_free(probe);
        if (aiolock_acquire(cache, KEY("r"), 5.0, 0.0, &waiter, &outcome) != AIOLOCK_OK ||
            outcome != AIOLOCK_TIMED_OUT)
            taken++;
        aiolock_release(waiter, NULL);
        if (aiolock_exclusive_check(ex) != AIOLOCK_OK || aiolock_lock_check(lock) != AIOLOCK_OK) checks_failed++;
        polls++;
        sleep_ms(50);
    }
    CHECK(polls > 4);
    CHECK(taken == 0);
    CHECK(checks_failed == 0);
    double left = 0;
    CHECK(aiolock_exclusive_lease_remaining(ex, &left) == AIOLOCK_OK && left > 0.0 && left <= watch_lease());
    uint64_t fence = 0;
    bool has = false;
    CHECK(aiolock_lock_fence(lock, &fence, &has) == AIOLOCK_OK && has);
    bool removed = false;
    CHECK(aiolock_exclusive_release(ex, &removed) == AIOLOCK_OK && removed);
    CHECK(aiolock_release(lock, &removed) == AIOLOCK_OK && removed);
    CHECK(aiolock_exclusive_try_acquire(cache, KEY("k"), 5.0, &probe) == AIOLOCK_OK && probe);
    aiolock_exclusive_free(probe);
    aiolock_cache_free(cache);
}

/* The lock key is deleted behind the holder's back: the next renewal finds it gone;
 * the check says AIOLOCK_LOST with the reason, the callback is called once, from the
 * watchdog thread, and extend and release report the truth. */
static void test_watchdog_reports_a_loss(void) {
    aiolock_cache *cache = open_cache();
    for (int flavor = 0; flavor < 2; flavor++) {
        aiolock_exclusive *ex = NULL;
        aiolock_lock *lock = NULL;
        aiolock_outcome outcome = 0;
        struct loss *l = calloc(1, sizeof *l);
        if (flavor == 0) {
            CHECK(aiolock_exclusive_acquire_ex(cache, KEY("l"), watch_lease(), 0.0, AIOLOCK_WATCHDOG, &ex) ==
                  AIOLOCK_OK);
            CHECK(aiolock_exclusive_on_lost(ex, on_loss, l) == AIOLOCK_OK);
            CHECK(aiolock_exclusive_check(ex) == AIOLOCK_OK);
        } else {
            CHECK(aiolock_acquire_ex(cache, KEY("l"), watch_lease(), 0.0, AIOLOCK_WATCHDOG, &lock, &outcome) ==
                  AIOLOCK_OK);
            CHECK(outcome == AIOLOCK_ACQUIRED);
            CHECK(aiolock_lock_on_lost(lock, on_loss, l) == AIOLOCK_OK);
            CHECK(aiolock_lock_check(lock) == AIOLOCK_OK);
        }
        bool deleted = false;
        CHECK(aiolock_cache_delete(cache, KEY("l-lock"), &deleted) == AIOLOCK_OK && deleted);
        CHECK(wait_for_flag(&l->left, 30000));
        CHECK(l->status == AIOLOCK_LOST);
        CHECK(strstr(l->message, "lock lost: ") == l->message);
        CHECK(strstr(l->message, "no longer ours") != NULL);
        CHECK(!pthread_equal(l->thread, pthread_self()));
        if (flavor == 0) {
            CHECK(aiolock_exclusive_check(ex) == AIOLOCK_LOST);
            CHECK(strstr(aiolock_last_error_message(), "no longer ours") != NULL);
            /* Lost already: refused with the reason, nothing registered. */
            CHECK(aiolock_exclusive_on_lost(ex, on_loss, l) == AIOLOCK_LOST);
            CHECK(aiolock_exclusive_extend(ex, 5.0) == AIOLOCK_LOST);
            bool removed = true;
            CHECK(aiolock_exclusive_release(ex, &removed) == AIOLOCK_OK && !removed);
        } else {
            CHECK(aiolock_lock_check(lock) == AIOLOCK_LOST);
            CHECK(strstr(aiolock_last_error_message(), "no longer ours") != NULL);
            CHECK(aiolock_lock_on_lost(lock, on_loss, l) == AIOLOCK_LOST);
            CHECK(aiolock_lock_extend(lock, 5.0) == AIOLOCK_LOST);
            bool removed = true;
            CHECK(aiolock_release(lock, &removed) == AIOLOCK_OK && !removed);
        }
        CHECK(atomic_load(&l->calls) == 1);
        free(l);
    }
    aiolock_cache_free(cache);
}

/* A release or free while the callback runs on the watchdog thread waits for it to
 * return: the callback still writes its user_data after the test would have freed it
 * (ASan and valgrind see a use after free if the release did not wait). */
static void test_release_waits_for_a_running_callback(void) {
    aiolock_cache *cache = open_cache();
    for (int how = 0; how < 3; how++) {
        struct loss *l = calloc(1, sizeof *l);
        l->hold_ms = 200;
        aiolock_exclusive *ex = NULL;
        aiolock_lock *lock = NULL;
        aiolock_outcome outcome = 0;
        if (how < 2) {
            CHECK(aiolock_exclusive_acquire_ex(cache, KEY("u"), watch_lease(), 0.0, AIOLOCK_WATCHDOG, &ex) ==
                  AIOLOCK_OK);
            CHECK(aiolock_exclusive_on_lost(ex, on_loss, l) == AIOLOCK_OK);
        } else {
            CHECK(aiolock_acquire_ex(cache, KEY("u"), watch_lease(), 0.0, AIOLOCK_WATCHDOG, &lock, &outcome) ==
                  AIOLOCK_OK);
            CHECK(aiolock_lock_on_lost(lock, on_loss, l) == AIOLOCK_OK);
        }
        bool deleted = false;
        CHECK(aiolock_cache_delete(cache, KEY("u-lock"), &deleted) == AIOLOCK_OK && deleted);
        CHECK(wait_for_flag(&l->entered, 30000));
        CHECK(!atomic_load(&l->left)); /* inside the callback for 200 ms */
        if (how == 0) {
            CHECK(aiolock_exclusive_release(ex, NULL) == AIOLOCK_OK);
        } else if (how == 1) {
            aiolock_exclusive_free(ex);
        } else {
            CHECK(aiolock_release(lock, NULL) == AIOLOCK_OK);
        }
        CHECK(atomic_load(&l->left)); /* the release returned after the callback */
        free(l);
    }
    aiolock_cache_free(cache);
}

/* A handle released before its loss never calls back; neither does a freed one. */
static void test_no_callback_after_release(void) {
    aiolock_cache *cache = open_cache();
    struct loss *l = calloc(1, sizeof *l);
    aiolock_exclusive *ex = NULL, *freed = NULL;
    CHECK(aiolock_exclusive_acquire_ex(cache, KEY("n"), watch_lease(), 0.0, AIOLOCK_WATCHDOG, &ex) == AIOLOCK_OK);
    CHECK(aiolock_exclusive_acquire_ex(cache, KEY("m"), watch_lease(), 0.0, AIOLOCK_WATCHDOG, &freed) == AIOLOCK_OK);
    CHECK(aiolock_exclusive_on_lost(ex, on_loss, l) == AIOLOCK_OK);
    CHECK(aiolock_exclusive_on_lost(ex, on_loss, l) == AIOLOCK_OK); /* several */
    CHECK(aiolock_exclusive_on_lost(freed, on_loss, l) == AIOLOCK_OK);
    bool removed = false;
    CHECK(aiolock_exclusive_release(ex, &removed) == AIOLOCK_OK && removed);
    aiolock_exclusive_free(freed);
    /* Past the lease end (a loss would have been reported by then): no call. */
    sleep_ms((long)(watch_lease() * 2000));
    CHECK(atomic_load(&l->calls) == 0);
    free(l);
    aiolock_cache_free(cache);
}

/* Releases racing losses: the callback (which writes its user_data) runs before,
 * during or not at all; the user_data is freed right after each release. */
static void *releaser(void *arg) {
    aiolock_exclusive *ex = arg;
    aiolock_exclusive_free(ex);
    return NULL;
}

static void test_release_races_the_loss(void) {
    aiolock_cache *cache = open_cache();
    const int rounds = is_memcached() ? 10 : 40;
    int bad = 0;
    for (int i = 0; i < rounds; i++) {
        struct loss *l = calloc(1, sizeof *l);
        l->hold_ms = i % 3; /* 0-2 ms inside */
        aiolock_exclusive *ex = NULL;
        if (aiolock_exclusive_acquire_ex(cache, KEY("race"), watch_lease(), 0.0, AIOLOCK_WATCHDOG, &ex) !=
                AIOLOCK_OK ||
            !ex || aiolock_exclusive_on_lost(ex, on_loss, l) != AIOLOCK_OK) {
            bad++;
            free(l);
            continue;
        }
        bool deleted = false;
        aiolock_cache_delete(cache, KEY("race-lock"), &deleted);
        /* Release at a varying moment around the next renewal, from another thread. */
        sleep_ms((long)(watch_lease() * 1000 / 3) - 3 + i % 7);
        pthread_t t;
        pthread_create(&t, NULL, releaser, ex);
        pthread_join(t, NULL);
        if (atomic_load(&l->entered) && !atomic_load(&l->left)) bad++;
        if (atomic_load(&l->calls) > 1) bad++;
        free(l);
    }
    CHECK(bad == 0);
    aiolock_cache_free(cache);
}

/* Every bad input of the lease functions: NULL pointers, unknown flags, bad leases,
 * an unwatched or a not-held handle; outputs untouched, nothing taken. */
static void test_lease_bad_inputs(void) {
    aiolock_cache *cache = open_cache();
    const aiolock_status BAD = AIOLOCK_INVALID_ARGUMENT;
    aiolock_lock *lock = (aiolock_lock *)0x1;
    aiolock_exclusive *ex = (aiolock_exclusive *)0x1;
    aiolock_outcome outcome = 0;
    struct loss l = {0};
    /* The _ex acquisitions: NULLs, unknown flags, bad durations. */
    CHECK(aiolock_acquire_ex(NULL, KEY("b"), 5.0, 0.0, 0, &lock, &outcome) == BAD);
    CHECK(aiolock_acquire_ex(cache, NULL, 1, 5.0, 0.0, 0, &lock, &outcome) == BAD);
    CHECK(aiolock_acquire_ex(cache, KEY("b"), 5.0, 0.0, 0, NULL, &outcome) == BAD);
    CHECK(aiolock_acquire_ex(cache, KEY("b"), 5.0, 0.0, 0, &lock, NULL) == BAD);
    CHECK(aiolock_exclusive_acquire_ex(NULL, KEY("b"), 5.0, 0.0, 0, &ex) == BAD);
    CHECK(aiolock_exclusive_acquire_ex(cache, NULL, 1, 5.0, 0.0, 0, &ex) == BAD);
    CHECK(aiolock_exclusive_acquire_ex(cache, KEY("b"), 5.0, 0.0, 0, NULL) == BAD);
    const uint32_t unknown[] = {4, 8, 0x80000000u, 0xffffffffu, AIOLOCK_FENCED | 16};
    for (size_t i = 0; i < sizeof unknown / sizeof *unknown; i++) {
        CHECK(aiolock_acquire_ex(cache, KEY("b"), 5.0, 0.0, unknown[i], &lock, &outcome) == BAD);
        CHECK(strstr(aiolock_last_error_message(), "flags: unknown bits") != NULL);
        CHECK(aiolock_exclusive_acquire_ex(cache, KEY("b"), 5.0, 0.0, unknown[i], &ex) == BAD);
        CHECK(strstr(aiolock_last_error_message(), "AIOLOCK_WATCHDOG") != NULL);
    }
    const double bad_leases[] = {NAN, INFINITY, -INFINITY, 5e-324, 1e-12, 1e300, 0.0, -0.0, -1.0};
    for (size_t i = 0; i < sizeof bad_leases / sizeof *bad_leases; i++) {
        CHECK(aiolock_acquire_ex(cache, KEY("b"), bad_leases[i], 0.0, AIOLOCK_FENCED, &lock, &outcome) == BAD);
        CHECK(aiolock_exclusive_acquire_ex(cache, KEY("b"), bad_leases[i], 0.0, AIOLOCK_WATCHDOG, &ex) == BAD);
        CHECK(strstr(aiolock_last_error_message(), "lease_secs") != NULL);
    }
    CHECK(aiolock_exclusive_acquire_ex(cache, KEY("b"), 5.0, -1.0, AIOLOCK_FENCED, &ex) == BAD);
    CHECK(aiolock_acquire_ex(cache, NULL, 0, 5.0, 0.0, AIOLOCK_FENCED, &lock, &outcome) == AIOLOCK_INVALID_KEY);
    CHECK(lock == (aiolock_lock *)0x1 && ex == (aiolock_exclusive *)0x1 && outcome == 0);

    /* NULL handles and outputs of the handle functions. */
    uint64_t fence = 7;
    bool has = true;
    double left = 7.0;
    CHECK(aiolock_lock_extend(NULL, 5.0) == BAD);
    CHECK(aiolock_lock_fence(NULL, &fence, &has) == BAD);
    CHECK(aiolock_lock_lease_remaining(NULL, &left) == BAD);
    CHECK(aiolock_lock_check(NULL) == BAD);
    CHECK(aiolock_lock_on_lost(NULL, on_loss, &l) == BAD);
    CHECK(aiolock_exclusive_extend(NULL, 5.0) == BAD);
    CHECK(aiolock_exclusive_fence(NULL, &fence, &has) == BAD);
    CHECK(aiolock_exclusive_lease_remaining(NULL, &left) == BAD);
    CHECK(aiolock_exclusive_check(NULL) == BAD);
    CHECK(aiolock_exclusive_on_lost(NULL, on_loss, &l) == BAD);
    CHECK(strstr(aiolock_last_error_message(), "lock is NULL") != NULL);

    /* A real, unwatched, unfenced pair of handles. */
    CHECK(aiolock_acquire_ex(cache, KEY("b"), 30.0, 0.0, 0, &lock, &outcome) == AIOLOCK_OK);
    CHECK(outcome == AIOLOCK_ACQUIRED);
    CHECK(aiolock_exclusive_acquire_ex(cache, KEY("c"), 30.0, 0.0, 0, &ex) == AIOLOCK_OK && ex);
    CHECK(aiolock_lock_fence(lock, NULL, &has) == BAD);
    CHECK(strstr(aiolock_last_error_message(), "fence_out") != NULL);
    CHECK(aiolock_lock_fence(lock, &fence, NULL) == BAD);
    CHECK(strstr(aiolock_last_error_message(), "has_fence_out") != NULL);
    CHECK(aiolock_exclusive_fence(ex, NULL, &has) == BAD);
    CHECK(aiolock_exclusive_fence(ex, &fence, NULL) == BAD);
    CHECK(fence == 7 && has);
    CHECK(aiolock_lock_lease_remaining(lock, NULL) == BAD);
    CHECK(strstr(aiolock_last_error_message(), "secs_out") != NULL);
    CHECK(aiolock_exclusive_lease_remaining(ex, NULL) == BAD);
    CHECK(left == 7.0);
    /* Extend: every bad lease, nothing changed. */
    for (size_t i = 0; i < sizeof bad_leases / sizeof *bad_leases; i++) {
        CHECK(aiolock_lock_extend(lock, bad_leases[i]) == BAD);
        CHECK(strstr(aiolock_last_error_message(), "lease_secs") != NULL);
        CHECK(aiolock_exclusive_extend(ex, bad_leases[i]) == BAD);
    }
    CHECK(aiolock_lock_lease_remaining(lock, &left) == AIOLOCK_OK && left > 20.0);
    /* Unwatched: check and on_lost are refused; NULL callbacks too. */
    CHECK(aiolock_lock_check(lock) == BAD);
    CHECK(strstr(aiolock_last_error_message(), "without AIOLOCK_WATCHDOG") != NULL);
    CHECK(aiolock_exclusive_check(ex) == BAD);
    CHECK(aiolock_lock_on_lost(lock, on_loss, &l) == BAD);
    CHECK(aiolock_exclusive_on_lost(ex, on_loss, &l) == BAD);
    CHECK(aiolock_lock_on_lost(lock, NULL, &l) == BAD);
    CHECK(strstr(aiolock_last_error_message(), "on_lost is NULL") != NULL);
    CHECK(aiolock_exclusive_on_lost(ex, NULL, &l) == BAD);
    /* A watched RedLock caller that did not get the lock: nothing to watch, Lost. */
    aiolock_lock *waiter = NULL;
    CHECK(aiolock_acquire_ex(cache, KEY("b"), 30.0, 0.0, AIOLOCK_WATCHDOG, &waiter, &outcome) == AIOLOCK_OK);
    CHECK(outcome == AIOLOCK_TIMED_OUT);
    CHECK(aiolock_lock_check(waiter) == AIOLOCK_LOST);
    CHECK(strstr(aiolock_last_error_message(), "does not hold") != NULL);
    CHECK(aiolock_lock_on_lost(waiter, on_loss, &l) == AIOLOCK_LOST);
    CHECK(aiolock_lock_on_lost(waiter, NULL, &l) == BAD);
    CHECK(aiolock_release(waiter, NULL) == AIOLOCK_OK);
    CHECK(atomic_load(&l.calls) == 0);
    bool removed = false;
    CHECK(aiolock_release(lock, &removed) == AIOLOCK_OK && removed);
    CHECK(aiolock_exclusive_release(ex, &removed) == AIOLOCK_OK && removed);
    aiolock_cache_free(cache);
}

/* A forked child's copies of its parent's handles leave the parent's locks alone:
 * released (removing nothing), extended (AIOLOCK_LOST) and freed in the child, both
 * locks are still the parent's, which releases them (removing them). Meaningless on
 * memory:// (the child's store is a copy): network backends only. */
static void test_forked_child_leaves_the_parents_locks(void) {
    if (strncmp(test_url(), "memory", 6) == 0) return;
    aiolock_cache *cache = open_cache();
    aiolock_exclusive *ex = NULL;
    aiolock_lock *lock = NULL;
    aiolock_outcome outcome = 0;
    CHECK(aiolock_exclusive_acquire_ex(cache, KEY("k"), 30.0, 0.0, AIOLOCK_WATCHDOG, &ex) == AIOLOCK_OK && ex);
    CHECK(aiolock_acquire(cache, KEY("r"), 30.0, 0.0, &lock, &outcome) == AIOLOCK_OK);
    CHECK(outcome == AIOLOCK_ACQUIRED);
    fflush(NULL);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        bool removed = true;
        int ok = aiolock_release(lock, &removed) == AIOLOCK_OK && !removed;
        ok = ok && aiolock_exclusive_extend(ex, 30.0) == AIOLOCK_LOST;
        ok = ok && strstr(aiolock_last_error_message(), "fork") != NULL;
        aiolock_exclusive_free(ex);
        _exit(ok ? 0 : 1);
    }
    int status = 0;
    CHECK(waitpid(pid, &status, 0) == pid);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    CHECK(aiolock_exclusive_check(ex) == AIOLOCK_OK);
    bool removed = false;
    CHECK(aiolock_exclusive_release(ex, &removed) == AIOLOCK_OK && removed);
    removed = false;
    CHECK(aiolock_release(lock, &removed) == AIOLOCK_OK && removed);
    aiolock_cache_free(cache);
}

int main(void) {
    test_version_and_status_texts();
    test_open();
    test_get_set_add_delete();
    test_outcomes();
    test_released_outcome();
    test_waiting();
    test_stale_release_is_owner_checked();
    test_optimistic();
    test_null_for_every_pointer();
    test_bad_durations();
    test_lock_suffix();
    test_last_error();
    test_panic_returns_a_status();
    test_stampede();
    test_exclusive_mutual_exclusion();
    test_exclusive_waits_until_held();
    test_exclusive_try_and_deadline();
    test_exclusive_bad_inputs();
    test_exclusive_bytes_and_free();
    test_lost_status();
    test_fences_grow();
    test_extend();
    test_watchdog_keeps_the_lock();
    test_watchdog_reports_a_loss();
    test_release_waits_for_a_running_callback();
    test_no_callback_after_release();
    test_release_races_the_loss();
    test_lease_bad_inputs();
    test_forked_child_leaves_the_parents_locks();
    printf("%d passed, %d failed\n", passed, failed);
    return failed == 0 ? 0 : 1;
}
