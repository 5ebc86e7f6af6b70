package aiolock

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// testURL is the cache under test: $AIOLOCK_TEST_URL, memory:// by default.
func testURL() string {
	if url := os.Getenv("AIOLOCK_TEST_URL"); url != "" {
		return url
	}
	return "memory://"
}

// shortLease is a lease or TTL that ends soon (memcached counts whole seconds).
func shortLease() time.Duration {
	if strings.HasPrefix(testURL(), "memcached") {
		return time.Second
	}
	return 50 * time.Millisecond
}

// waitUntilGone polls until key is gone (its short TTL ended). memcached sends a TTL
// of ceil(ttl + 0.25 s) + 2 whole seconds on its coarse clock (a key lives less than
// ttl + 4.5 s), so that a lease is a floor.
func waitUntilGone(t testing.TB, c *Cache, key string) {
	t.Helper()
	slack := 500 * time.Millisecond
	if strings.HasPrefix(testURL(), "memcached") {
		slack = 5 * time.Second
	}
	for deadline := time.Now().Add(shortLease() + slack); ; {
		_, found, err := c.Get(key)
		if err != nil {
			t.Fatal(err)
		}
		if !found {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%q outlived its TTL", key)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

var opened int32

// open opens the cache under test in a namespace of its own.
func open(t testing.TB) *Cache {
	t.Helper()
	sep := "?"
	if strings.Contains(testURL(), "?") {
		sep = "&"
	}
	url := fmt.Sprintf("%s%snamespace=go%d-%d:", testURL(), sep, os.Getpid(), atomic.AddInt32(&opened, 1))
	c, err := Open(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// waitForWaiters polls until exactly n callers of c wait for the lock on key: the
// ordering hook of the tests, instead of a sleep that hopes the other goroutine got
// there. It fails after a generous limit.
func waitForWaiters(c *Cache, key string, n int) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		count, err := c.Waiting(key)
		if err != nil || count == n {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d callers waited for %q, not %d", count, key, n)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestVersion(t *testing.T) {
	if Version() == "" {
		t.Fatal("empty version")
	}
}

func TestGetSetAddDelete(t *testing.T) {
	c := open(t)
	if _, found, err := c.Get("k"); err != nil || found {
		t.Fatalf("absent key: found=%v err=%v", found, err)
	}
	if err := c.Set("k", []byte("a\x00b"), 0); err != nil {
		t.Fatal(err)
	}
	if v, found, err := c.Get("k"); err != nil || !found || string(v) != "a\x00b" {
		t.Fatalf("got %q %v %v", v, found, err)
	}
	if added, err := c.Add("k", []byte("x"), time.Second); err != nil || added {
		t.Fatalf("add on a present key: %v %v", added, err)
	}
	if added, err := c.Add("empty", nil, time.Second); err != nil || !added {
		t.Fatalf("add: %v %v", added, err)
	}
	if v, found, err := c.Get("empty"); err != nil || !found || len(v) != 0 {
		t.Fatalf("empty value: %q %v %v", v, found, err)
	}
	if deleted, err := c.Delete("k"); err != nil || !deleted {
		t.Fatalf("delete: %v %v", deleted, err)
	}
}

func TestOutcomes(t *testing.T) {
	c := open(t)
	held, err := c.Acquire("o", 5*time.Second)
	if err != nil || held.Outcome() != Acquired {
		t.Fatalf("first: %v %v", held, err)
	}
	other, err := c.Acquire("o", 5*time.Second, WaitAtMost(0))
	if err != nil || other.Outcome() != TimedOut {
		t.Fatalf("no wait: %v %v", other, err)
	}
	if removed, err := other.Release(); err != nil || removed {
		t.Fatalf("a lock not held removes nothing: %v %v", removed, err)
	}

	done := make(chan Outcome, 1)
	go acquireAndRelease(t, c, "o", 5*time.Second, done)
	if err := waitForWaiters(c, "o", 1); err != nil { // release only once it waits
		t.Fatal(err)
	}
	if removed, err := held.Release(); err != nil || !removed {
		t.Fatalf("release: %v %v", removed, err)
	}
	if o := <-done; o != Released {
		t.Fatalf("waiter: %v", o)
	}
	// Release consumes: a second one cannot reach the freed handle.
	if _, err := held.Release(); !errors.Is(err, ErrClosed) {
		t.Fatalf("double release: %v", err)
	}
}

// acquireAndRelease acquires key (waiting, if held), releases it, and sends how the
// acquisition ended on done (0 after an error, which fails the test).
func acquireAndRelease(t *testing.T, c *Cache, key string, lease time.Duration, done chan<- Outcome) {
	l, err := c.Acquire(key, lease)
	if err != nil {
		t.Error(err)
		done <- 0
		return
	}
	l.Release()
	done <- l.Outcome()
}

// Waiting counts the callers that wait, only while they wait, per key.
func TestWaiting(t *testing.T) {
	c := open(t)
	if n, err := c.Waiting("w"); err != nil || n != 0 {
		t.Fatalf("nobody waits: %v %v", n, err)
	}
	held, err := c.Acquire("w", 30*time.Second)
	if err != nil || held.Outcome() != Acquired {
		t.Fatalf("first: %v %v", held, err)
	}
	done := make(chan Outcome, 3)
	for i := 0; i < 3; i++ {
		go acquireAndRelease(t, c, "w", 30*time.Second, done)
	}
	if err := waitForWaiters(c, "w", 3); err != nil {
		t.Fatal(err)
	}
	if n, err := c.Waiting("other"); err != nil || n != 0 {
		t.Fatalf("another key: %v %v", n, err)
	}
	held.Release()
	for i := 0; i < 3; i++ {
		if o := <-done; o != Released {
			t.Fatalf("waiter: %v", o)
		}
	}
	if n, err := c.Waiting("w"); err != nil || n != 0 {
		t.Fatalf("after the release: %v %v", n, err)
	}
	c.Close()
	if _, err := c.Waiting("w"); !errors.Is(err, ErrClosed) {
		t.Fatalf("closed cache: %v", err)
	}
}

func TestStaleReleaseIsOwnerChecked(t *testing.T) {
	c := open(t)
	stale, _ := c.Acquire("s", shortLease())
	waitUntilGone(t, c, "s-lock") // the lease ends
	current, err := c.Acquire("s", 5*time.Second, WaitAtMost(0))
	if err != nil || current.Outcome() != Acquired {
		t.Fatalf("%v %v", current, err)
	}
	if removed, err := stale.Release(); err != nil || removed {
		t.Fatalf("stale release removed the current lock: %v %v", removed, err)
	}
	if removed, _ := current.Release(); !removed {
		t.Fatal("current release")
	}
}

func TestOptimisticConflict(t *testing.T) {
	c := open(t)
	c.Set("n", []byte("1"), 0)
	lock, err := c.Optimistic("n")
	if err != nil {
		t.Fatal(err)
	}
	if v, found := lock.Value(); !found || string(v) != "1" {
		t.Fatalf("value %q %v", v, found)
	}
	c.Set("n", []byte("5"), 0) // another writer
	err = lock.Cas([]byte("2"), 0)
	if !errors.Is(err, ErrConflict) {
		t.Fatalf("want ErrConflict, got %v", err)
	}
	var aerr *Error
	if !errors.As(err, &aerr) || aerr.Status != ErrConflict || !strings.Contains(aerr.Message, "changed") {
		t.Fatalf("error details: %#v", aerr)
	}
	if err := lock.Cas([]byte("2"), 0); !errors.Is(err, ErrClosed) {
		t.Fatalf("a used lock: %v", err)
	}
	lock, _ = c.Optimistic("n")
	if err := lock.Cas([]byte("6"), time.Minute); err != nil {
		t.Fatal(err)
	}
	if v, _, _ := c.Get("n"); string(v) != "6" {
		t.Fatalf("after cas: %q", v)
	}
	lock, _ = c.Optimistic("absent")
	if _, found := lock.Value(); found {
		t.Fatal("absent key found")
	}
	lock.Close()
	lock.Close()
}

func TestBadInput(t *testing.T) {
	if _, err := Open("memory://?namespace=\xff"); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("non-UTF-8 URL: %v", err)
	}
	if _, err := Open("nosuch://x"); !errors.Is(err, ErrInvalidArgument) || !strings.Contains(err.Error(), "nosuch") {
		t.Fatalf("bad scheme: %v", err)
	}
	c := open(t)
	for _, lease := range []time.Duration{0, -time.Second} {
		if _, err := c.Acquire("k", lease); !errors.Is(err, ErrInvalidArgument) {
			t.Fatalf("lease %v: %v", lease, err)
		}
	}
	if _, err := c.Acquire("", time.Second); !errors.Is(err, ErrInvalidKey) {
		t.Fatalf("empty key: %v", err)
	}
	if err := c.Set("k", nil, -time.Second); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("negative ttl: %v", err)
	}
	c.Close()
	if _, _, err := c.Get("k"); !errors.Is(err, ErrClosed) {
		t.Fatalf("closed cache: %v", err)
	}
}

// Goroutines move between OS threads; each error message must still be its own call's.
func TestErrorMessagesFollowTheirGoroutine(t *testing.T) {
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := 0; i < 300; i++ {
				url := fmt.Sprintf("nosuch://g%d-i%d", g, i)
				_, err := Open(url)
				if err == nil || !strings.Contains(err.Error(), url) {
					t.Errorf("%s: %v", url, err)
					return
				}
				if c, err := Open("memory://"); err == nil {
					c.Close()
				}
				runtime.Gosched()
			}
		}(g)
	}
	wg.Wait()
}

// The stampede oracle: many goroutines want one value; it is computed once.
func TestStampede(t *testing.T) {
	c := open(t)
	var computed int32
	var wg sync.WaitGroup
	values := make([]string, 32)
	for g := range values {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for attempt := 0; attempt < 100; attempt++ {
				if v, found, err := c.Get("report"); err != nil || found {
					values[g] = string(v)
					return
				}
				l, err := c.Acquire("report", 30*time.Second)
				if err != nil {
					t.Error(err)
					return
				}
				if l.Outcome() == Acquired {
					if _, found, _ := c.Get("report"); !found {
						atomic.AddInt32(&computed, 1)
						// The expensive part lasts until every other goroutine found
						// the cache empty and waits for this one.
						if err := waitForWaiters(c, "report", len(values)-1); err != nil {
							t.Error(err)
						}
						c.Set("report", []byte("computed"), 0)
					}
				}
				l.Release()
			}
		}(g)
	}
	wg.Wait()
	if computed != 1 {
		t.Fatalf("computed %d times", computed)
	}
	for g, v := range values {
		if v != "computed" {
			t.Fatalf("goroutine %d got %q", g, v)
		}
	}
}

// A forgotten Lock is released by its finalizer.
func TestFinalizerReleases(t *testing.T) {
	c := open(t)
	func() {
		l, _ := c.Acquire("f", time.Minute)
		if l.Outcome() != Acquired {
			t.Fatal("not acquired")
		}
	}()
	// Polled: the finalizer runs on its own goroutine some time after a GC.
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); {
		runtime.GC()
		time.Sleep(10 * time.Millisecond)
		l, err := c.Acquire("f", time.Minute, WaitAtMost(0))
		if err != nil {
			t.Fatal(err)
		}
		outcome := l.Outcome()
		l.Release()
		if outcome == Acquired {
			return
		}
	}
	t.Fatal("the forgotten lock was never released")
}

// BenchmarkAcquireRelease is the Go side of ffi/bench.sh.
func BenchmarkAcquireRelease(b *testing.B) {
	c := open(b)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		l, err := c.Acquire("bench", 10*time.Second)
		if err != nil {
			b.Fatal(err)
		}
		if removed, err := l.Release(); err != nil || !removed {
			b.Fatal(removed, err)
		}
	}
}
