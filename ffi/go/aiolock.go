// Package aiolock binds libaiolock, the C library of aiolock: a cache-stampede
// RedLock and an OptimisticLock (Python aiocache's locks), and an exclusive lock (a
// mutex with a lease: Cache.Lock, Cache.TryLock) over a memory, Redis or memcached
// cache chosen by URL.
//
// Every call blocks the calling goroutine (and its OS thread) until the library
// answers. Handles are freed by finalizers if they are forgotten, but Close and
// Release free them at a known time and report errors.
//
//	cache, err := aiolock.Open("memory://?namespace=app:")
//	if err != nil { ... }
//	defer cache.Close()
//	lock, err := cache.Acquire("report", 5*time.Second)
//	if err != nil { ... }
//	if lock.Outcome() == aiolock.Acquired {
//		_ = cache.Set("report", compute(), 0)
//	}
//	_, err = lock.Release()
//
// The exclusive lock waits until it holds the key, or its context ends:
//
//	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
//	defer cancel()
//	l, err := cache.Lock(ctx, "account:42", 30*time.Second)
//	if errors.Is(err, aiolock.ErrNotAcquired) { ... } // held by others until ctx ended
//	if err != nil { ... }
//	defer l.Release()
//
// Install: cgo finds the header and the library through pkg-config (aiolock.pc), as
// ffi/install.sh of the aiolock repository installs them; the import path is the
// module's:
//
//	ffi/install.sh /usr/local              # libaiolock, aiolock.h, aiolock.pc
//	go get aiolock.dev/ffi/go@v0.1.0       # import aiolock "aiolock.dev/ffi/go"
//
// For another prefix, PKG_CONFIG_PATH=PREFIX/lib/pkgconfig, and the run-time linker
// must find libaiolock.so (CGO_LDFLAGS=-Wl,-rpath,PREFIX/lib or LD_LIBRARY_PATH).
package aiolock

/*
#cgo pkg-config: aiolock
#include <stdlib.h>
#include "aiolock.h"

// The lease functions of both handles behind one call each: the Go side of Lock and
// Exclusive is written once (guard), and says which handle it holds.
static enum aiolock_status go_extend(void *h, bool ex, double lease) {
	return ex ? aiolock_exclusive_extend(h, lease) : aiolock_lock_extend(h, lease);
}
static enum aiolock_status go_fence(void *h, bool ex, uint64_t *fence, bool *has) {
	return ex ? aiolock_exclusive_fence(h, fence, has) : aiolock_lock_fence(h, fence, has);
}
static enum aiolock_status go_remaining(void *h, bool ex, double *secs) {
	return ex ? aiolock_exclusive_lease_remaining(h, secs) : aiolock_lock_lease_remaining(h, secs);
}
static enum aiolock_status go_check(void *h, bool ex) {
	return ex ? aiolock_exclusive_check(h) : aiolock_lock_check(h);
}
static enum aiolock_status go_release(void *h, bool ex, bool *removed) {
	return ex ? aiolock_exclusive_release(h, removed) : aiolock_release(h, removed);
}

// The loss callback: user_data is the cgo.Handle of the guard's watcher (callback.go).
extern void aiolockGoLost(uintptr_t watcher, int status, char *message);
static void go_lost(void *user_data, int status, const char *message) {
	aiolockGoLost((uintptr_t)user_data, status, (char *)message);
}
static enum aiolock_status go_on_lost(void *h, bool ex, uintptr_t watcher) {
	return ex ? aiolock_exclusive_on_lost(h, go_lost, (void *)watcher)
	          : aiolock_lock_on_lost(h, go_lost, (void *)watcher);
}
*/
import "C"

import (
	"context"
	"errors"
	"runtime"
	"runtime/cgo"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"
)

// Status is a status code of the C library. Each non-zero Status is an error value:
// test for one with errors.Is(err, aiolock.ErrConflict).
type Status int

// The status codes of the C library (stable numbers, see include/aiolock.h).
const (
	ErrInvalidArgument Status = C.AIOLOCK_INVALID_ARGUMENT
	ErrInvalidKey      Status = C.AIOLOCK_INVALID_KEY
	ErrConflict        Status = C.AIOLOCK_CONFLICT
	ErrTimeout         Status = C.AIOLOCK_TIMEOUT
	ErrConnection      Status = C.AIOLOCK_CONNECTION
	ErrProtocol        Status = C.AIOLOCK_PROTOCOL
	ErrBackend         Status = C.AIOLOCK_BACKEND
	ErrUnsupported     Status = C.AIOLOCK_UNSUPPORTED
	ErrOther           Status = C.AIOLOCK_ERROR
	ErrPanic           Status = C.AIOLOCK_PANIC
	// ErrLost: the lock is no longer this guard's (its lease ended and another caller
	// may hold it, it was deleted, or the guard never held it): from Extend, Check, and
	// a watched guard's Lost channel. Stop the work that needed the lock.
	ErrLost Status = C.AIOLOCK_LOST
)

// Error returns the text of the status code.
func (s Status) Error() string {
	return "aiolock: " + C.GoString(C.aiolock_status_str(C.int(s)))
}

// Error is a failed call: its status code and the library's detailed message.
// It wraps its Status, so errors.Is(err, aiolock.ErrConflict) works.
type Error struct {
	Status  Status
	Message string
}

func (e *Error) Error() string { return "aiolock: " + e.Message }

// Unwrap returns the status code.
func (e *Error) Unwrap() error { return e.Status }

// ErrClosed is returned by calls on a cache that was closed, a lock that was
// released, or an optimistic lock that was used or closed.
var ErrClosed = errors.New("aiolock: handle already closed or released")

// ErrNotAcquired is returned by TryLock when another caller holds the lock, and by
// Lock when its context ended first: then the error also matches the context's error
// (errors.Is(err, context.DeadlineExceeded) or context.Canceled). Not getting the lock
// is not a failure of the backend: the other errors are.
var ErrNotAcquired = errors.New("aiolock: lock not acquired: held by another caller")

// call runs one C call and reads the thread's last error on the same OS thread:
// without LockOSThread the goroutine could move to another thread between the two.
func call(f func() C.enum_aiolock_status) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	status := f()
	if status == C.AIOLOCK_OK {
		return nil
	}
	return &Error{Status: Status(status), Message: C.GoString(C.aiolock_last_error_message())}
}

// bytesOf passes a string's bytes to C without copying (C only reads them during
// the call; the bytes hold no Go pointers).
func bytesOf(s string) (*C.uint8_t, C.size_t) {
	if len(s) == 0 {
		return nil, 0
	}
	// A string header starts with its data pointer (unsafe.StringData needs Go 1.20).
	return *(**C.uint8_t)(unsafe.Pointer(&s)), C.size_t(len(s))
}

func sliceOf(b []byte) (*C.uint8_t, C.size_t) {
	if len(b) == 0 {
		return nil, 0
	}
	return (*C.uint8_t)(unsafe.Pointer(&b[0])), C.size_t(len(b))
}

// Version is the version of the C library.
func Version() string { return C.GoString(C.aiolock_version()) }

// Cache is a cache opened from a URL. It is safe for concurrent use.
type Cache struct {
	mu  sync.RWMutex // guards ptr against Close during a call
	ptr *C.aiolock_cache
}

// Open opens the cache a URL names: "memory://" (in this process), "redis://…" or
// "memcached://…" (the library is built with both by default). Query options:
// namespace, lock_suffix (default "-lock"), connect_timeout, response_timeout
// (seconds), pool_size, and the backend's own; an unknown option is an error.
func Open(url string) (*Cache, error) {
	curl := C.CString(url)
	defer C.free(unsafe.Pointer(curl))
	var ptr *C.aiolock_cache
	if err := call(func() C.enum_aiolock_status { return C.aiolock_cache_open(curl, &ptr) }); err != nil {
		return nil, err
	}
	c := &Cache{ptr: ptr}
	runtime.SetFinalizer(c, (*Cache).Close)
	return c, nil
}

// Close frees the cache, after the calls in flight return. Locks taken from it stay
// valid. Closing twice does nothing.
func (c *Cache) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ptr != nil {
		C.aiolock_cache_free(c.ptr)
		c.ptr = nil
		runtime.SetFinalizer(c, nil)
	}
	return nil
}

// with runs f with the live handle, or returns ErrClosed.
func (c *Cache) with(f func(*C.aiolock_cache) C.enum_aiolock_status) error {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.ptr == nil {
		return ErrClosed
	}
	err := call(func() C.enum_aiolock_status { return f(c.ptr) })
	runtime.KeepAlive(c)
	return err
}

func seconds(d time.Duration) C.double { return C.double(d.Seconds()) }

// Get returns the value of key and whether it was present.
func (c *Cache) Get(key string) ([]byte, bool, error) {
	k, kn := bytesOf(key)
	var data *C.uint8_t
	var n C.size_t
	var found C.bool
	err := c.with(func(p *C.aiolock_cache) C.enum_aiolock_status {
		return C.aiolock_cache_get(p, k, kn, &data, &n, &found)
	})
	if err != nil || !bool(found) {
		return nil, false, err
	}
	value := []byte{}
	if data != nil {
		value = C.GoBytes(unsafe.Pointer(data), C.int(n))
		C.aiolock_buffer_free(data, n)
	}
	return value, true, nil
}

// Set stores value under key; it expires after ttl (0: never).
func (c *Cache) Set(key string, value []byte, ttl time.Duration) error {
	k, kn := bytesOf(key)
	v, vn := sliceOf(value)
	return c.with(func(p *C.aiolock_cache) C.enum_aiolock_status {
		return C.aiolock_cache_set(p, k, kn, v, vn, seconds(ttl))
	})
}

// Add stores value under key only if key is absent, and says whether it did.
func (c *Cache) Add(key string, value []byte, ttl time.Duration) (bool, error) {
	k, kn := bytesOf(key)
	v, vn := sliceOf(value)
	var added C.bool
	err := c.with(func(p *C.aiolock_cache) C.enum_aiolock_status {
		return C.aiolock_cache_add(p, k, kn, v, vn, seconds(ttl), &added)
	})
	return bool(added), err
}

// Delete removes key and says whether it was present.
func (c *Cache) Delete(key string) (bool, error) {
	k, kn := bytesOf(key)
	var deleted C.bool
	err := c.with(func(p *C.aiolock_cache) C.enum_aiolock_status {
		return C.aiolock_cache_delete(p, k, kn, &deleted)
	})
	return bool(deleted), err
}

// Waiting returns how many callers of this cache in this process are waiting for
// the RedLock on key right now (their Acquire found it held): for stampede
// monitoring, and for tests that must release only once N callers wait (poll it;
// never sleep a fixed time and hope). Callers in other processes, or of another
// Cache opened on the same server, are not counted. It sends nothing to the backend.
func (c *Cache) Waiting(key string) (int, error) {
	k, kn := bytesOf(key)
	var count C.size_t
	err := c.with(func(p *C.aiolock_cache) C.enum_aiolock_status {
		return C.aiolock_cache_waiting(p, k, kn, &count)
	})
	return int(count), err
}

// Outcome says how Acquire ended.
type Outcome int

const (
	// Acquired: this caller holds the lock: compute, store, then Release.
	Acquired Outcome = C.AIOLOCK_ACQUIRED
	// Released: another holder released the lock while this caller waited; its
	// value should be in the cache. This caller does not hold the lock.
	Released Outcome = C.AIOLOCK_RELEASED
	// TimedOut: the wait bound passed first. This caller does not hold the lock.
	TimedOut Outcome = C.AIOLOCK_TIMED_OUT
)

func (o Outcome) String() string {
	switch o {
	case Acquired:
		return "Acquired"
	case Released:
		return "Released"
	case TimedOut:
		return "TimedOut"
	}
	return "Outcome(?)"
}

// AcquireOption changes how Acquire, Lock and TryLock acquire.
type AcquireOption func(*acquireOptions)

type acquireOptions struct {
	wait    float64
	waitSet bool
	flags   C.uint32_t
}

func options(opts []AcquireOption) acquireOptions {
	o := acquireOptions{wait: float64(C.AIOLOCK_WAIT_DEFAULT)}
	for _, opt := range opts {
		opt(&o)
	}
	return o
}

// WaitAtMost bounds Acquire's wait for a held lock (default: one lease). 0 tries
// once. Lock and TryLock refuse it (ErrInvalidArgument): their context bounds the wait.
func WaitAtMost(d time.Duration) AcquireOption {
	return func(o *acquireOptions) { o.wait, o.waitSet = d.Seconds(), true }
}

// Fenced gives the acquisition a fencing token (Fence): a number larger than that of
// every earlier acquisition of the key, in every process. Send it with each write the
// lock protects, and let the storage keep the highest fence it has seen and refuse
// writes with a lower one: a lease cannot stop a holder that paused past its lease
// (GC, SIGSTOP, a slow disk) from writing after the next holder started; a fence
// checked by the storage can.
func Fenced() AcquireOption {
	return func(o *acquireOptions) { o.flags |= C.AIOLOCK_FENCED }
}

// Watchdog renews the lease automatically while the guard is held (a third of the
// lease after the acquisition and after each confirmed renewal, from the library's
// watchdog thread), and reports a loss: Check returns ErrLost, and the guard's Lost
// channel receives the error, at once when a renewal fails or finds the lock taken,
// and in any case before the lease would have ended. Release stops the renewals.
func Watchdog() AcquireOption {
	return func(o *acquireOptions) { o.flags |= C.AIOLOCK_WATCHDOG }
}

// liveWatchers counts the watchers registered with the library and not yet released:
// a test checks that releasing (or finalizing) a guard frees its watcher.
var liveWatchers int64

// watcher turns the library's loss callback into a guard's Lost channel. The library
// holds its cgo.Handle (not the guard's, so a forgotten guard is still finalized).
type watcher struct {
	once   sync.Once
	ch     chan error
	handle cgo.Handle
}

func newWatcher() *watcher {
	w := &watcher{ch: make(chan error, 1)}
	w.handle = cgo.NewHandle(w)
	atomic.AddInt64(&liveWatchers, 1)
	return w
}

// finish sends err (unless nil) and closes the channel, once.
func (w *watcher) finish(err error) {
	w.once.Do(func() {
		if err != nil {
			w.ch <- err
		}
		close(w.ch)
	})
}

// released: the library will not call back any more (its release or free returned).
func (w *watcher) released() {
	w.finish(nil)
	w.handle.Delete()
	atomic.AddInt64(&liveWatchers, -1)
}

// guard is what Lock and Exclusive share: the C handle (which of the two), its lock
// and its watcher. The exported methods of each type call these.
type guard struct {
	mu        sync.Mutex
	ptr       unsafe.Pointer // *C.aiolock_lock or *C.aiolock_exclusive; nil once released
	exclusive C.bool
	watch     *watcher // nil unless acquired with Watchdog and held
}

// watchIfAsked registers the watcher of a held guard acquired with Watchdog. A lock
// lost already is reported on the channel at once.
func (g *guard) watchIfAsked(o acquireOptions) error {
	if o.flags&C.AIOLOCK_WATCHDOG == 0 {
		return nil
	}
	w := newWatcher()
	err := call(func() C.enum_aiolock_status {
		return C.go_on_lost(g.ptr, g.exclusive, C.uintptr_t(w.handle))
	})
	if errors.Is(err, ErrLost) {
		w.finish(err)
		err = nil
	}
	if err != nil {
		w.released()
		return err
	}
	g.watch = w
	return nil
}

func (g *guard) release() (bool, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.ptr == nil {
		return false, ErrClosed
	}
	ptr := g.ptr
	g.ptr = nil // consumed by the call, whatever it returns
	var removed C.bool
	err := call(func() C.enum_aiolock_status { return C.go_release(ptr, g.exclusive, &removed) })
	if g.watch != nil {
		g.watch.released()
	}
	return bool(removed), err
}

func (g *guard) extend(lease time.Duration) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.ptr == nil {
		return ErrClosed
	}
	return call(func() C.enum_aiolock_status { return C.go_extend(g.ptr, g.exclusive, seconds(lease)) })
}

func (g *guard) fence() (uint64, bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	var fence C.uint64_t
	var has C.bool
	if g.ptr == nil || C.go_fence(g.ptr, g.exclusive, &fence, &has) != C.AIOLOCK_OK {
		return 0, false
	}
	return uint64(fence), bool(has)
}

func (g *guard) leaseRemaining() time.Duration {
	g.mu.Lock()
	defer g.mu.Unlock()
	var secs C.double
	if g.ptr == nil || C.go_remaining(g.ptr, g.exclusive, &secs) != C.AIOLOCK_OK {
		return 0
	}
	return time.Duration(float64(secs) * float64(time.Second))
}

func (g *guard) check() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.ptr == nil {
		return ErrClosed
	}
	return call(func() C.enum_aiolock_status { return C.go_check(g.ptr, g.exclusive) })
}

func (g *guard) lost() <-chan error {
	if g.watch == nil {
		return nil
	}
	return g.watch.ch
}

// Lock is the result of Acquire. It holds the lock when its Outcome is Acquired.
// Release it exactly once; a forgotten Lock is released by a finalizer.
type Lock struct {
	g       guard
	outcome Outcome
}

// Acquire takes the RedLock on key for at most lease, or waits for its holder (at
// most one lease, or as WaitAtMost says). Not getting the lock is not an error: see
// the Lock's Outcome. Fenced and Watchdog apply to an acquisition that holds the lock.
func (c *Cache) Acquire(key string, lease time.Duration, opts ...AcquireOption) (*Lock, error) {
	o := options(opts)
	k, kn := bytesOf(key)
	var ptr *C.aiolock_lock
	var outcome C.enum_aiolock_outcome
	err := c.with(func(p *C.aiolock_cache) C.enum_aiolock_status {
		return C.aiolock_acquire_ex(p, k, kn, seconds(lease), C.double(o.wait), o.flags, &ptr, &outcome)
	})
	if err != nil {
		return nil, err
	}
	l := &Lock{g: guard{ptr: unsafe.Pointer(ptr)}, outcome: Outcome(outcome)}
	if l.outcome == Acquired {
		if err := l.g.watchIfAsked(o); err != nil {
			_, _ = l.g.release()
			return nil, err
		}
	}
	runtime.SetFinalizer(l, func(l *Lock) { _, _ = l.Release() })
	return l, nil
}

// Outcome says how the acquisition ended.
func (l *Lock) Outcome() Outcome { return l.outcome }

// Release releases the lock if this Lock holds it (owner-checked: a lock whose lease
// ended and was taken by another caller is left alone) and frees the handle. It
// reports whether it removed the lock. A second Release returns ErrClosed. It stops
// a watched Lock's renewals and closes its Lost channel (without an error, unless
// the loss came first).
func (l *Lock) Release() (bool, error) {
	runtime.SetFinalizer(l, nil)
	return l.g.release()
}

// Extend renews the lease, owner-checked: if the lock is still ours, its lease now
// ends lease from now (it may shorten it). ErrLost when the lock is no longer ours or
// this Lock never held it (nothing changed); ErrTimeout or ErrConnection leave the
// renewal unknown. A watched Lock's renewals go on from here, with this lease.
func (l *Lock) Extend(lease time.Duration) error { return l.g.extend(lease) }

// Fence returns the fencing token of a Lock acquired with Fenced that holds the lock,
// and true; else 0 and false.
func (l *Lock) Fence() (uint64, bool) { return l.g.fence() }

// LeaseRemaining is how long the lease lasts at least from now (on this process's
// monotonic clock, counted from just before the claim or the last confirmed renewal
// was sent); 0 once it ended, when not held, or after Release.
func (l *Lock) LeaseRemaining() time.Duration { return l.g.leaseRemaining() }

// Check reports the watchdog's verdict on a Lock acquired with Watchdog: nil while
// held and renewed, an error matching ErrLost (with the reason) once the lock is
// lost. It sends nothing. ErrInvalidArgument for a Lock acquired without Watchdog,
// ErrLost for one that does not hold the lock, ErrClosed after Release.
func (l *Lock) Check() error { return l.g.check() }

// Lost returns a channel that receives the error (matching ErrLost) once when the
// watched lock is lost, and is then closed; Release closes it without an error. The
// loss comes from the library's watchdog thread; nothing runs in a goroutine. It is
// nil (it never receives: a select waits on its other cases) for a Lock acquired
// without Watchdog or that does not hold the lock.
func (l *Lock) Lost() <-chan error { return l.g.lost() }

// OptimisticLock is a read of one key and its version; Cas writes only if the key is
// unchanged. Use it once (Cas or Close).
type OptimisticLock struct {
	mu    sync.Mutex
	ptr   *C.aiolock_optimistic
	value []byte
	found bool
}

// Optimistic begins an optimistic lock on key: reads its value and version.
func (c *Cache) Optimistic(key string) (*OptimisticLock, error) {
	k, kn := bytesOf(key)
	var ptr *C.aiolock_optimistic
	var data *C.uint8_t
	var n C.size_t
	var found C.bool
	err := c.with(func(p *C.aiolock_cache) C.enum_aiolock_status {
		status := C.aiolock_optimistic_begin(p, k, kn, &ptr)
		if status == C.AIOLOCK_OK {
			status = C.aiolock_optimistic_value(ptr, &data, &n, &found)
		}
		return status
	})
	if err != nil {
		C.aiolock_optimistic_free(ptr) // NULL when begin failed
		return nil, err
	}
	o := &OptimisticLock{ptr: ptr, found: bool(found)}
	if found {
		o.value = C.GoBytes(unsafe.Pointer(data), C.int(n))
	}
	runtime.SetFinalizer(o, (*OptimisticLock).Close)
	return o, nil
}

// Value is the value read when the lock began, and whether the key was present.
func (o *OptimisticLock) Value() ([]byte, bool) { return o.value, o.found }

// Cas writes value (expiring after ttl, 0: never) only if the key has not changed
// since the lock began; else it writes nothing and returns an error that
// errors.Is(err, ErrConflict). The lock is used up either way.
func (o *OptimisticLock) Cas(value []byte, ttl time.Duration) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.ptr == nil {
		return ErrClosed
	}
	ptr := o.ptr
	o.ptr = nil // consumed by the call, whatever it returns
	runtime.SetFinalizer(o, nil)
	v, vn := sliceOf(value)
	return call(func() C.enum_aiolock_status { return C.aiolock_cas(ptr, v, vn, seconds(ttl)) })
}

// Close frees the lock without writing. Closing twice does nothing.
func (o *OptimisticLock) Close() error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.ptr != nil {
		C.aiolock_optimistic_free(o.ptr)
		o.ptr = nil
		runtime.SetFinalizer(o, nil)
	}
	return nil
}

// Exclusive is a held exclusive lock (Cache.Lock, Cache.TryLock): a mutex with a
// lease. No other caller, in any process, acquires the key until it is released or
// its lease ends. Release it exactly once; a forgotten Exclusive is released by a
// finalizer.
//
// A lease lock cannot stop a holder that paused past its lease (GC, SIGSTOP, a slow
// disk) from writing after the next holder started: choose a lease much longer than
// the work, or renew it (Extend, Watchdog), and let the storage refuse stale writes
// where that would harm (Fenced).
type Exclusive struct {
	g guard
}

// lockSlice is how long one C call of Lock waits at most when its context can be
// cancelled: the C call cannot be interrupted, so Lock waits in slices and checks
// the context between them.
const lockSlice = 100 * time.Millisecond

// notAcquired is the error of a Lock whose context ended first: it is ErrNotAcquired
// and wraps the context's error.
type notAcquired struct{ cause error }

func (e *notAcquired) Error() string        { return "aiolock: lock not acquired: " + e.cause.Error() }
func (e *notAcquired) Is(target error) bool { return target == ErrNotAcquired }
func (e *notAcquired) Unwrap() error        { return e.cause }

// Lock takes the exclusive lock on key, held for at most lease once acquired,
// waiting through other holders' releases and lease ends until it holds it or ctx
// ends. It stores the lock like Acquire (a RedLock and an exclusive lock on one key
// exclude each other).
//
// When ctx ends first, Lock returns an error that matches both ErrNotAcquired and
// ctx's error. A ctx that has already ended returns that error at once, sending
// nothing.
//
// Deadline and cancellation: ctx's deadline bounds the wait exactly (the C call is
// given the time left). A cancellation is noticed within 100 ms: the C call cannot be
// interrupted, so a cancellable ctx waits in slices of at most 100 ms, and each slice
// claims the key once more (one round trip). A ctx that can never end
// (context.Background()) waits as long as it takes, in one call.
//
// Options: Fenced, Watchdog (WaitAtMost is refused: ctx bounds the wait).
func (c *Cache) Lock(ctx context.Context, key string, lease time.Duration, opts ...AcquireOption) (*Exclusive, error) {
	o, err := exclusiveOptions(opts)
	if err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, &notAcquired{err}
	}
	for {
		wait := 24 * time.Hour // ctx can never end: one long wait per day
		if ctx.Done() != nil {
			wait = lockSlice
		}
		if deadline, ok := ctx.Deadline(); ok {
			left := time.Until(deadline)
			if left <= 0 {
				return nil, &notAcquired{context.DeadlineExceeded}
			}
			if left < wait {
				wait = left
			}
		}
		l, err := c.exclusive(key, lease, wait.Seconds(), o)
		if err != nil || l != nil {
			return l, err
		}
		if err := ctx.Err(); err != nil {
			return nil, &notAcquired{err}
		}
	}
}

// TryLock claims the exclusive lock on key once, never waiting: ErrNotAcquired when
// another caller holds it now. Options: Fenced, Watchdog.
func (c *Cache) TryLock(key string, lease time.Duration, opts ...AcquireOption) (*Exclusive, error) {
	o, err := exclusiveOptions(opts)
	if err != nil {
		return nil, err
	}
	l, err := c.exclusive(key, lease, 0, o)
	if err == nil && l == nil {
		return nil, ErrNotAcquired
	}
	return l, err
}

func exclusiveOptions(opts []AcquireOption) (acquireOptions, error) {
	o := options(opts)
	if o.waitSet {
		return o, &Error{Status: ErrInvalidArgument, Message: "invalid argument: WaitAtMost does not apply to Lock " +
			"and TryLock: the context bounds the wait"}
	}
	return o, nil
}

// exclusive is one aiolock_exclusive_acquire_ex: (nil, nil) when not acquired.
func (c *Cache) exclusive(key string, lease time.Duration, wait float64, o acquireOptions) (*Exclusive, error) {
	k, kn := bytesOf(key)
	var ptr *C.aiolock_exclusive
	err := c.with(func(p *C.aiolock_cache) C.enum_aiolock_status {
		return C.aiolock_exclusive_acquire_ex(p, k, kn, seconds(lease), C.double(wait), o.flags, &ptr)
	})
	if err != nil || ptr == nil {
		return nil, err
	}
	l := &Exclusive{g: guard{ptr: unsafe.Pointer(ptr), exclusive: true}}
	if err := l.g.watchIfAsked(o); err != nil {
		_, _ = l.g.release()
		return nil, err
	}
	runtime.SetFinalizer(l, func(l *Exclusive) { _, _ = l.Release() })
	return l, nil
}

// Release releases the lock (owner-checked: a lock whose lease ended and was taken
// by another caller is left alone) and frees the handle. It reports whether it
// removed the lock: false when the lease had already ended. A second Release returns
// ErrClosed. It stops a watched lock's renewals and closes its Lost channel.
func (l *Exclusive) Release() (bool, error) {
	runtime.SetFinalizer(l, nil)
	return l.g.release()
}

// Extend renews the lease, owner-checked: it now ends lease from now. ErrLost when
// the lock is no longer ours (nothing changed). See Lock.Extend.
func (l *Exclusive) Extend(lease time.Duration) error { return l.g.extend(lease) }

// Fence returns the fencing token of a lock acquired with Fenced, and true; else 0
// and false.
func (l *Exclusive) Fence() (uint64, bool) { return l.g.fence() }

// LeaseRemaining is how long the lease lasts at least from now; 0 once it ended or
// after Release. See Lock.LeaseRemaining.
func (l *Exclusive) LeaseRemaining() time.Duration { return l.g.leaseRemaining() }

// Check is nil while a lock acquired with Watchdog is held and renewed, and an error
// matching ErrLost once it is lost. See Lock.Check.
func (l *Exclusive) Check() error { return l.g.check() }

// Lost receives the loss of a lock acquired with Watchdog once, then is closed
// (Release closes it without an error); nil without Watchdog. See Lock.Lost.
func (l *Exclusive) Lost() <-chan error { return l.g.lost() }
