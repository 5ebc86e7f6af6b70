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
// Build: cgo needs the header and the library, e.g.
//
//	CGO_CFLAGS=-I/path/to/aiolock/include CGO_LDFLAGS="-L/path/to/lib -laiolock" go build
package aiolock

/*
#cgo CFLAGS: -I${SRCDIR}/../../include
#cgo LDFLAGS: -laiolock
#include <stdlib.h>
#include "aiolock.h"
*/
import "C"

import (
	"context"
	"errors"
	"runtime"
	"sync"
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

// AcquireOption changes how Acquire waits.
type AcquireOption func(*acquireOptions)

type acquireOptions struct{ wait float64 }

// WaitAtMost bounds the wait for a held lock (default: one lease). 0 tries once.
func WaitAtMost(d time.Duration) AcquireOption {
	return func(o *acquireOptions) { o.wait = d.Seconds() }
}

// Lock is the result of Acquire. It holds the lock when its Outcome is Acquired.
// Release it exactly once; a forgotten Lock is released by a finalizer.
type Lock struct {
	mu      sync.Mutex
	ptr     *C.aiolock_lock
	outcome Outcome
}

// Acquire takes the RedLock on key for at most lease, or waits for its holder (at
// most one lease, or as WaitAtMost says). Not getting the lock is not an error: see
// the Lock's Outcome.
func (c *Cache) Acquire(key string, lease time.Duration, opts ...AcquireOption) (*Lock, error) {
	o := acquireOptions{wait: float64(C.AIOLOCK_WAIT_DEFAULT)}
	for _, opt := range opts {
		opt(&o)
	}
	k, kn := bytesOf(key)
	var ptr *C.aiolock_lock
	var outcome C.enum_aiolock_outcome
	err := c.with(func(p *C.aiolock_cache) C.enum_aiolock_status {
		return C.aiolock_acquire(p, k, kn, seconds(lease), C.double(o.wait), &ptr, &outcome)
	})
	if err != nil {
		return nil, err
	}
	l := &Lock{ptr: ptr, outcome: Outcome(outcome)}
	runtime.SetFinalizer(l, func(l *Lock) { _, _ = l.Release() })
	return l, nil
}

// Outcome says how the acquisition ended.
func (l *Lock) Outcome() Outcome { return l.outcome }

// Release releases the lock if this Lock holds it (owner-checked: a lock whose lease
// ended and was taken by another caller is left alone) and frees the handle. It
// reports whether it removed the lock. A second Release returns ErrClosed.
func (l *Lock) Release() (bool, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.ptr == nil {
		return false, ErrClosed
	}
	ptr := l.ptr
	l.ptr = nil // consumed by the call, whatever it returns
	runtime.SetFinalizer(l, nil)
	var removed C.bool
	err := call(func() C.enum_aiolock_status { return C.aiolock_release(ptr, &removed) })
	return bool(removed), err
}

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
// the work, and let the storage refuse stale writes where that would harm.
type Exclusive struct {
	mu  sync.Mutex
	ptr *C.aiolock_exclusive
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
func (c *Cache) Lock(ctx context.Context, key string, lease time.Duration) (*Exclusive, error) {
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
		l, err := c.exclusive(key, lease, wait.Seconds())
		if err != nil || l != nil {
			return l, err
		}
		if err := ctx.Err(); err != nil {
			return nil, &notAcquired{err}
		}
	}
}

// TryLock claims the exclusive lock on key once, never waiting: ErrNotAcquired when
// another caller holds it now.
func (c *Cache) TryLock(key string, lease time.Duration) (*Exclusive, error) {
	l, err := c.exclusive(key, lease, 0)
	if err == nil && l == nil {
		return nil, ErrNotAcquired
	}
	return l, err
}

// exclusive is one aiolock_exclusive_acquire: (nil, nil) when not acquired.
func (c *Cache) exclusive(key string, lease time.Duration, wait float64) (*Exclusive, error) {
	k, kn := bytesOf(key)
	var ptr *C.aiolock_exclusive
	err := c.with(func(p *C.aiolock_cache) C.enum_aiolock_status {
		return C.aiolock_exclusive_acquire(p, k, kn, seconds(lease), C.double(wait), &ptr)
	})
	if err != nil || ptr == nil {
		return nil, err
	}
	l := &Exclusive{ptr: ptr}
	runtime.SetFinalizer(l, func(l *Exclusive) { _, _ = l.Release() })
	return l, nil
}

// Release releases the lock (owner-checked: a lock whose lease ended and was taken
// by another caller is left alone) and frees the handle. It reports whether it
// removed the lock: false when the lease had already ended. A second Release returns
// ErrClosed.
func (l *Exclusive) Release() (bool, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.ptr == nil {
		return false, ErrClosed
	}
	ptr := l.ptr
	l.ptr = nil // consumed by the call, whatever it returns
	runtime.SetFinalizer(l, nil)
	var removed C.bool
	err := call(func() C.enum_aiolock_status { return C.aiolock_exclusive_release(ptr, &removed) })
	return bool(removed), err
}
