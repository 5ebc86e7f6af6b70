package aiolock_test

import (
	"context"
	"errors"
	"fmt"
	"time"

	aiolock "aiolock.dev/ffi/go"
)

// The stampede pattern: one caller computes the value, the others wait for it.
func Example() {
	cache, err := aiolock.Open("memory://?namespace=app:")
	if err != nil {
		panic(err)
	}
	defer cache.Close()
	lock, err := cache.Acquire("report", 5*time.Second)
	if err != nil {
		panic(err)
	}
	if lock.Outcome() == aiolock.Acquired {
		_ = cache.Set("report", []byte("42"), 0) // compute and store
	}
	if _, err := lock.Release(); err != nil {
		panic(err)
	}
	value, _, _ := cache.Get("report")
	fmt.Printf("report = %s\n", value)
	// Output: report = 42
}

// Read-modify-write without waiting: Cas fails with ErrConflict when another writer
// got there first.
func ExampleOptimisticLock_Cas() {
	cache, _ := aiolock.Open("memory://")
	defer cache.Close()
	_ = cache.Set("counter", []byte("1"), 0)
	lock, _ := cache.Optimistic("counter")
	_ = cache.Set("counter", []byte("5"), 0) // another writer
	err := lock.Cas([]byte("2"), 0)
	fmt.Println(errors.Is(err, aiolock.ErrConflict))
	// Output: true
}

// A mutex with a lease across processes: Lock waits until it holds the key, or until
// its context ends (then the error is ErrNotAcquired and the context's error).
func ExampleCache_Lock() {
	cache, _ := aiolock.Open("memory://")
	defer cache.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	lock, err := cache.Lock(ctx, "account:42", 30*time.Second)
	if errors.Is(err, aiolock.ErrNotAcquired) {
		fmt.Println("held by others for 10 s")
		return
	} else if err != nil {
		panic(err)
	}
	// ... read, change and write the account ...
	_, err = cache.TryLock("account:42", 30*time.Second)
	fmt.Println(errors.Is(err, aiolock.ErrNotAcquired))
	removed, _ := lock.Release()
	fmt.Println(removed)
	// Output:
	// true
	// true
}
