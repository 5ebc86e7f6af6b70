// Command aiolock-hold takes a RedLock, says so, holds it for a while, stores a value
// and releases it: the holder side of the cross-language test (ffi/test.sh), where
// waiters in other processes and languages must wake on its release.
//
//	aiolock-hold URL KEY HOLD_MS
package main

import (
	"fmt"
	"os"
	"strconv"
	"time"

	"aiolock"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "aiolock-hold:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	if len(args) != 3 {
		return fmt.Errorf("usage: aiolock-hold URL KEY HOLD_MS")
	}
	url, key := args[0], args[1]
	holdMs, err := strconv.Atoi(args[2])
	if err != nil {
		return err
	}
	cache, err := aiolock.Open(url)
	if err != nil {
		return err
	}
	defer cache.Close()
	lock, err := cache.Acquire(key, 30*time.Second)
	if err != nil {
		return err
	}
	if lock.Outcome() != aiolock.Acquired {
		return fmt.Errorf("expected to acquire %q, got %v", key, lock.Outcome())
	}
	fmt.Println("held")
	time.Sleep(time.Duration(holdMs) * time.Millisecond)
	if err := cache.Set(key, []byte("computed by go"), 0); err != nil {
		return err
	}
	removed, err := lock.Release()
	if err != nil {
		return err
	}
	if !removed {
		return fmt.Errorf("the lease of %q ended before the release", key)
	}
	fmt.Println("released")
	return nil
}
