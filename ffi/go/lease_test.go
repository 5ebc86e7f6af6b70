package aiolock

import (
	"context"
	"errors"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// watchLease is a lease the watchdog renews every third of it (memcached counts
// whole seconds).
func watchLease() time.Duration {
	if strings.HasPrefix(testURL(), "memcached") {
		return time.Second
	}
	return 300 * time.Millisecond
}

// expirySlack is how long after its TTL a key may still live on the server.
func expirySlack() time.Duration {
	if strings.HasPrefix(testURL(), "memcached") {
		return 5 * time.Second
	}
	return 500 * time.Millisecond
}

// Fences grow with each fenced acquisition, through Acquire, TryLock and Lock; an
// unfenced guard, or one that does not hold the lock, has none.
func TestFencesGrow(t *testing.T) {
	c := open(t)
	var previous uint64
	for i := 0; i < 4; i++ {
		l, err := c.Acquire("f", 30*time.Second, Fenced(), WaitAtMost(0))
		if err != nil || l.Outcome() != Acquired {
			t.Fatalf("acquire: %v %v", l, err)
		}
		fence, ok := l.Fence()
		if !ok || fence <= previous {
			t.Fatalf("fence %d (%v) after %d", fence, ok, previous)
		}
		previous = fence
		waiter, err := c.Acquire("f", 30*time.Second, Fenced(), WaitAtMost(0))
		if err != nil || waiter.Outcome() != TimedOut {
			t.Fatalf("waiter: %v %v", waiter, err)
		}
		if fence, ok := waiter.Fence(); ok || fence != 0 {
			t.Fatalf("a caller without the lock has no fence: %d %v", fence, ok)
		}
		waiter.Release()
		l.Release()
		if fence, ok := l.Fence(); ok || fence != 0 {
			t.Fatalf("a released lock has no fence: %d %v", fence, ok)
		}
		var x *Exclusive
		if i%2 == 0 {
			x, err = c.TryLock("f", 30*time.Second, Fenced())
		} else {
			x, err = c.Lock(context.Background(), "f", 30*time.Second, Fenced())
		}
		if err != nil {
			t.Fatal(err)
		}
		fence, ok = x.Fence()
		if !ok || fence <= previous {
			t.Fatalf("exclusive fence %d (%v) after %d", fence, ok, previous)
		}
		previous = fence
		x.Release()
	}
	x, err := c.TryLock("f", 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer x.Release()
	if fence, ok := x.Fence(); ok || fence != 0 {
		t.Fatalf("unfenced: %d %v", fence, ok)
	}
}

// Extend is owner-checked: it moves the lease end, errors.Is(err, ErrLost) once the
// lock is gone or for a caller that never held it, ErrClosed after Release.
func TestExtend(t *testing.T) {
	c := open(t)
	l, err := c.Acquire("x", 20*time.Second)
	if err != nil || l.Outcome() != Acquired {
		t.Fatalf("acquire: %v %v", l, err)
	}
	if left := l.LeaseRemaining(); left <= 10*time.Second || left > 20*time.Second {
		t.Fatalf("remaining %v of 20 s", left)
	}
	if err := l.Extend(time.Minute); err != nil {
		t.Fatal(err)
	}
	if left := l.LeaseRemaining(); left <= 50*time.Second {
		t.Fatalf("remaining %v after extending to 1 min", left)
	}
	for _, bad := range []time.Duration{0, -time.Second} {
		if err := l.Extend(bad); !errors.Is(err, ErrInvalidArgument) {
			t.Fatalf("extend %v: %v", bad, err)
		}
	}
	waiter, _ := c.Acquire("x", time.Second, WaitAtMost(0))
	if err := waiter.Extend(time.Second); !errors.Is(err, ErrLost) {
		t.Fatalf("a caller without the lock extends: %v", err)
	}
	if left := waiter.LeaseRemaining(); left != 0 {
		t.Fatalf("a caller without the lock has %v left", left)
	}
	waiter.Release()
	// Shortened, then gone: Lost, and the release removes nothing.
	if err := l.Extend(shortLease()); err != nil {
		t.Fatal(err)
	}
	waitUntilGone(t, c, "x-lock")
	err = l.Extend(time.Second)
	var e *Error
	if !errors.Is(err, ErrLost) || !errors.As(err, &e) || !strings.Contains(e.Message, "no longer ours") {
		t.Fatalf("extend after the lease ended: %v", err)
	}
	if removed, err := l.Release(); err != nil || removed {
		t.Fatalf("release after the lease ended: %v %v", removed, err)
	}
	if err := l.Extend(time.Second); !errors.Is(err, ErrClosed) {
		t.Fatalf("extend after release: %v", err)
	}
	if left := l.LeaseRemaining(); left != 0 {
		t.Fatalf("after release: %v left", left)
	}

	// The exclusive lock, extended past its first lease: nobody else gets it.
	first := 2 * shortLease()
	x, err := c.TryLock("y", first)
	if err != nil {
		t.Fatal(err)
	}
	if err := x.Extend(time.Minute); err != nil {
		t.Fatal(err)
	}
	time.Sleep(first + expirySlack()) // the first lease would have ended by now
	if other, err := c.TryLock("y", time.Second); !errors.Is(err, ErrNotAcquired) {
		t.Fatalf("another caller took an extended lock: %v %v", other, err)
	}
	if removed, err := x.Release(); err != nil || !removed {
		t.Fatalf("release: %v %v", removed, err)
	}
}

// The watchdog keeps the lock while the work lasts several leases: another caller,
// polling all along, never gets it, and Check stays nil.
func TestWatchdogKeepsTheLock(t *testing.T) {
	c := open(t)
	x, err := c.TryLock("k", watchLease(), Watchdog())
	if err != nil {
		t.Fatal(err)
	}
	l, err := c.Acquire("r", watchLease(), Watchdog(), Fenced(), WaitAtMost(0))
	if err != nil || l.Outcome() != Acquired {
		t.Fatalf("acquire: %v %v", l, err)
	}
	for end := time.Now().Add(4*watchLease() + expirySlack()); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		if other, err := c.TryLock("k", time.Second); !errors.Is(err, ErrNotAcquired) {
			t.Fatalf("another caller got a watched lock: %v %v", other, err)
		}
		if other, err := c.Acquire("r", time.Second, WaitAtMost(0)); err != nil || other.Outcome() != TimedOut {
			t.Fatalf("another caller got a watched RedLock: %v %v", other, err)
		} else {
			other.Release()
		}
		if err := x.Check(); err != nil {
			t.Fatal(err)
		}
		if err := l.Check(); err != nil {
			t.Fatal(err)
		}
		select {
		case err := <-x.Lost():
			t.Fatalf("lost: %v", err)
		case err := <-l.Lost():
			t.Fatalf("lost: %v", err)
		default:
		}
	}
	if left := x.LeaseRemaining(); left <= 0 || left > watchLease() {
		t.Fatalf("remaining %v of a renewed %v lease", left, watchLease())
	}
	if removed, err := x.Release(); err != nil || !removed {
		t.Fatalf("release: %v %v", removed, err)
	}
	if removed, err := l.Release(); err != nil || !removed {
		t.Fatalf("release: %v %v", removed, err)
	}
	// Released: the channel is closed without an error, Check says closed.
	if err, ok := <-x.Lost(); ok || err != nil {
		t.Fatalf("after release: %v %v", err, ok)
	}
	if err := x.Check(); !errors.Is(err, ErrClosed) {
		t.Fatalf("check after release: %v", err)
	}
}

// The lock key is deleted behind the holder's back: the next renewal finds it gone;
// Lost receives an ErrLost once and is closed, Check says ErrLost, Extend too, and
// the release removes nothing.
func TestWatchdogReportsALoss(t *testing.T) {
	c := open(t)
	x, err := c.TryLock("l", watchLease(), Watchdog())
	if err != nil {
		t.Fatal(err)
	}
	if deleted, err := c.Delete("l-lock"); err != nil || !deleted {
		t.Fatalf("delete: %v %v", deleted, err)
	}
	select {
	case err := <-x.Lost():
		var e *Error
		if !errors.Is(err, ErrLost) || !errors.As(err, &e) || !strings.Contains(e.Message, "no longer ours") {
			t.Fatalf("lost: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the loss was never reported")
	}
	if err, ok := <-x.Lost(); ok || err != nil {
		t.Fatalf("sent once, then closed: %v %v", err, ok)
	}
	if err := x.Check(); !errors.Is(err, ErrLost) {
		t.Fatalf("check: %v", err)
	}
	if err := x.Extend(time.Second); !errors.Is(err, ErrLost) {
		t.Fatalf("extend: %v", err)
	}
	if removed, err := x.Release(); err != nil || removed {
		t.Fatalf("release: %v %v", removed, err)
	}
}

// Unwatched guards have no Lost channel (nil: it never receives) and Check refuses
// them; options are checked.
func TestUnwatchedAndOptions(t *testing.T) {
	c := open(t)
	x, err := c.TryLock("u", 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if x.Lost() != nil {
		t.Fatal("an unwatched lock has a Lost channel")
	}
	if err := x.Check(); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("check of an unwatched lock: %v", err)
	}
	x.Release()
	// A watched RedLock caller that did not get the lock watches nothing.
	held, _ := c.Acquire("u", 30*time.Second)
	waiter, err := c.Acquire("u", 30*time.Second, Watchdog(), WaitAtMost(0))
	if err != nil || waiter.Outcome() != TimedOut || waiter.Lost() != nil {
		t.Fatalf("waiter: %v %v", waiter, err)
	}
	if err := waiter.Check(); !errors.Is(err, ErrLost) {
		t.Fatalf("check of a caller without the lock: %v", err)
	}
	waiter.Release()
	held.Release()
	if _, err := c.Lock(context.Background(), "u", time.Second, WaitAtMost(time.Second)); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("Lock with WaitAtMost: %v", err)
	}
	if _, err := c.TryLock("u", time.Second, WaitAtMost(0)); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("TryLock with WaitAtMost: %v", err)
	}
	if _, err := c.TryLock("u", 0, Watchdog(), Fenced()); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("a zero lease: %v", err)
	}
	if n := atomic.LoadInt64(&liveWatchers); n != 0 {
		t.Fatalf("%d watchers left", n)
	}
}

// Releasing watched guards leaves no goroutine and no watcher behind: goroutines
// waiting on Lost return when the guard is released, and a forgotten watched guard
// is still finalized (the library holds the watcher, not the guard).
func TestNoLeakAfterRelease(t *testing.T) {
	c := open(t)
	runtime.GC()
	before := runtime.NumGoroutine()
	const n = 20
	done := make(chan error, n)
	for i := 0; i < n; i++ {
		x, err := c.TryLock("g", 30*time.Second, Watchdog())
		if err != nil {
			t.Fatal(err)
		}
		go func() {
			err, ok := <-x.Lost()
			if ok {
				done <- err
				return
			}
			done <- nil
		}()
		if removed, err := x.Release(); err != nil || !removed {
			t.Fatalf("release: %v %v", removed, err)
		}
		if err := <-done; err != nil {
			t.Fatalf("a released lock reported a loss: %v", err)
		}
	}
	if n := atomic.LoadInt64(&liveWatchers); n != 0 {
		t.Fatalf("%d watchers left after release", n)
	}
	for deadline := time.Now().Add(30 * time.Second); runtime.NumGoroutine() > before; {
		if time.Now().After(deadline) {
			t.Fatalf("%d goroutines, %d before", runtime.NumGoroutine(), before)
		}
		time.Sleep(time.Millisecond)
	}
	// Forgotten: finalized, which releases the lock and the watcher.
	func() {
		if _, err := c.TryLock("forgotten", 30*time.Second, Watchdog()); err != nil {
			t.Fatal(err)
		}
	}()
	for deadline := time.Now().Add(30 * time.Second); atomic.LoadInt64(&liveWatchers) != 0; {
		if time.Now().After(deadline) {
			t.Fatal("the forgotten watched lock was never finalized")
		}
		runtime.GC()
		time.Sleep(10 * time.Millisecond)
	}
	x, err := c.TryLock("forgotten", time.Second)
	if err != nil {
		t.Fatalf("the finalizer released the lock: %v", err)
	}
	x.Release()
}

// Releases race the watchdog's loss reports (the key deleted, the release around the
// next renewal) from many goroutines: under -race, no data race and each channel
// ends closed with at most one error.
func TestReleaseRacesTheLoss(t *testing.T) {
	c := open(t)
	rounds := 40
	if strings.HasPrefix(testURL(), "memcached") {
		rounds = 8
	}
	errs := make(chan error, rounds)
	for i := 0; i < rounds; i++ {
		go func(i int) {
			key := "race" + string(rune('a'+i%26)) + string(rune('a'+i/26))
			x, err := c.TryLock(key, watchLease(), Watchdog())
			if err != nil {
				errs <- err
				return
			}
			c.Delete(key + "-lock")
			time.Sleep(watchLease()/3 - 3*time.Millisecond + time.Duration(i%7)*time.Millisecond)
			x.Release()
			got := 0
			for range x.Lost() {
				got++
			}
			if got > 1 {
				errs <- errors.New("more than one loss")
				return
			}
			errs <- nil
		}(i)
	}
	for i := 0; i < rounds; i++ {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if n := atomic.LoadInt64(&liveWatchers); n != 0 {
		t.Fatalf("%d watchers left", n)
	}
}
