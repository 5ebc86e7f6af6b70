package aiolock

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Goroutines of one cache take the exclusive lock in turn: nobody finds another
// inside, and every entry happens (half of them TryLock first, then Lock).
func TestLockMutualExclusion(t *testing.T) {
	c := open(t)
	const goroutines, entries = 8, 20
	var inside, overlaps, done int32
	var wg sync.WaitGroup
	errs := make(chan error, goroutines)
	for g := 0; g < goroutines; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < entries; i++ {
				var l *Exclusive
				err := ErrNotAcquired
				if i%2 == 0 {
					l, err = c.TryLock("x", 30*time.Second)
				}
				if errors.Is(err, ErrNotAcquired) {
					ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
					l, err = c.Lock(ctx, "x", 30*time.Second)
					cancel()
				}
				if err != nil {
					errs <- err
					return
				}
				if atomic.AddInt32(&inside, 1) != 1 {
					atomic.AddInt32(&overlaps, 1)
				}
				time.Sleep(time.Microsecond) // let the others try while inside
				atomic.AddInt32(&inside, -1)
				if removed, err := l.Release(); err != nil || !removed {
					errs <- errors.New("release: the lease should still be ours")
					return
				}
				atomic.AddInt32(&done, 1)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if overlaps != 0 || done != goroutines*entries {
		t.Fatalf("%d overlaps, %d of %d entries", overlaps, done, goroutines*entries)
	}
}

// lockIn runs Lock on another goroutine and sends its result.
func lockIn(c *Cache, ctx context.Context, key string) chan result {
	got := make(chan result, 1)
	go func() {
		l, err := c.Lock(ctx, key, 30*time.Second)
		got <- result{l, err}
	}()
	return got
}

type result struct {
	lock *Exclusive
	err  error
}

// An exclusive waiter waits through the holder's release and then holds the lock
// (a RedLock waiter would get Released without it).
func TestLockWaitsUntilHeld(t *testing.T) {
	c := open(t)
	held, err := c.TryLock("e", 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	got := lockIn(c, context.Background(), "e")
	if err := waitForWaiters(c, "e", 1); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-got:
		t.Fatalf("acquired while held: %v", r)
	default:
	}
	if removed, err := held.Release(); err != nil || !removed {
		t.Fatalf("release: %v %v", removed, err)
	}
	r := <-got
	if r.err != nil {
		t.Fatal(r.err)
	}
	if _, err := c.TryLock("e", time.Second); !errors.Is(err, ErrNotAcquired) {
		t.Fatalf("the waiter holds it now, TryLock: %v", err)
	}
	if lock, err := c.Acquire("e", time.Second, WaitAtMost(0)); err != nil || lock.Outcome() != TimedOut {
		t.Fatalf("a RedLock on the same key: %v %v", lock, err)
	}
	if removed, err := r.lock.Release(); err != nil || !removed {
		t.Fatalf("release: %v %v", removed, err)
	}
	if _, err := r.lock.Release(); !errors.Is(err, ErrClosed) {
		t.Fatalf("double release: %v", err)
	}
}

// TryLock never waits: with the key held for 30 s it returns at once.
func TestTryLockNeverWaits(t *testing.T) {
	c := open(t)
	held, err := c.TryLock("t", 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Release()
	start := time.Now()
	l, err := c.TryLock("t", 30*time.Second)
	if l != nil || !errors.Is(err, ErrNotAcquired) {
		t.Fatalf("TryLock of a held key: %v %v", l, err)
	}
	if errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("a TryLock has no context: %v", err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("TryLock waited %v", took)
	}
}

// Lock returns by its context's deadline, with an error that is both ErrNotAcquired
// and context.DeadlineExceeded, and leaves the holder's lock alone.
func TestLockDeadline(t *testing.T) {
	c := open(t)
	held, err := c.TryLock("d", 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	const bound = 300 * time.Millisecond
	ctx, cancel := context.WithTimeout(context.Background(), bound)
	defer cancel()
	start := time.Now()
	l, err := c.Lock(ctx, "d", 30*time.Second)
	took := time.Since(start)
	if l != nil || !errors.Is(err, ErrNotAcquired) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Lock past its deadline: %v %v", l, err)
	}
	if took < bound-time.Millisecond || took > bound+5*time.Second {
		t.Fatalf("returned after %v, the deadline was %v", took, bound)
	}
	if n, err := c.Waiting("d"); err != nil || n != 0 {
		t.Fatalf("still waiting: %d %v", n, err)
	}
	if removed, err := held.Release(); err != nil || !removed {
		t.Fatalf("the holder's lock: %v %v", removed, err)
	}
}

// A context without a deadline is honoured when cancelled: the waiter returns
// (within a slice) with context.Canceled and takes nothing; the holder is untouched.
func TestLockCancel(t *testing.T) {
	c := open(t)
	held, err := c.TryLock("c", 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	got := lockIn(c, ctx, "c")
	if err := waitForWaiters(c, "c", 1); err != nil {
		t.Fatal(err)
	}
	cancelled := time.Now()
	cancel()
	r := <-got
	if r.lock != nil || !errors.Is(r.err, ErrNotAcquired) || !errors.Is(r.err, context.Canceled) {
		t.Fatalf("cancelled Lock: %v", r)
	}
	if took := time.Since(cancelled); took > 5*time.Second {
		t.Fatalf("returned %v after the cancellation", took)
	}
	if removed, err := held.Release(); err != nil || !removed {
		t.Fatalf("the holder's lock: %v %v", removed, err)
	}
	// The cancelled waiter took nothing: the key is free.
	l, err := c.TryLock("c", time.Second)
	if err != nil {
		t.Fatal(err)
	}
	l.Release()
}

// A context that has already ended sends nothing: the free key is not taken.
func TestLockDoneContext(t *testing.T) {
	c := open(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if l, err := c.Lock(ctx, "f", time.Second); l != nil || !errors.Is(err, context.Canceled) {
		t.Fatalf("Lock with a cancelled context: %v %v", l, err)
	}
	expired, cancel2 := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
	defer cancel2()
	if l, err := c.Lock(expired, "f", time.Second); l != nil || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Lock past its deadline: %v %v", l, err)
	}
	l, err := c.TryLock("f", time.Second)
	if err != nil {
		t.Fatalf("the key should be free: %v", err)
	}
	l.Release()
}

// Bad input is a library error with its status (errors.Is), not ErrNotAcquired.
func TestLockBadInput(t *testing.T) {
	c := open(t)
	ctx := context.Background()
	for _, lease := range []time.Duration{0, -time.Second} {
		if _, err := c.Lock(ctx, "b", lease); !errors.Is(err, ErrInvalidArgument) || errors.Is(err, ErrNotAcquired) {
			t.Fatalf("lease %v: %v", lease, err)
		}
		if _, err := c.TryLock("b", lease); !errors.Is(err, ErrInvalidArgument) {
			t.Fatalf("TryLock, lease %v: %v", lease, err)
		}
	}
	if _, err := c.Lock(ctx, "", time.Second); !errors.Is(err, ErrInvalidKey) {
		t.Fatalf("empty key: %v", err)
	}
	// Keys are bytes.
	l, err := c.TryLock("\xff\xfe", time.Second)
	if err != nil {
		t.Fatalf("a key that is not UTF-8: %v", err)
	}
	l.Release()
	closed := open(t)
	closed.Close()
	if _, err := closed.Lock(ctx, "b", time.Second); !errors.Is(err, ErrClosed) {
		t.Fatalf("closed cache: %v", err)
	}
	if _, err := closed.TryLock("b", time.Second); !errors.Is(err, ErrClosed) {
		t.Fatalf("closed cache: %v", err)
	}
}
