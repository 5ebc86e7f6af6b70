// Command aiolock-hold takes a RedLock, says so, holds it until a line (or the end of
// input) arrives on its standard input, stores a value and releases it: the holder
// side of the cross-language test (ffi/test.sh), where waiters in other processes and
// languages must wake on its release. The test writes that line once the waiters
// wait (it watches their subscriptions), so no sleep orders the processes.
//
//	aiolock-hold URL KEY
package main

import (
	"bufio"
	"fmt"
	"os"
	"time"

	aiolock "aiolock.dev/ffi/go"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "aiolock-hold:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	if len(args) != 2 {
		return fmt.Errorf("usage: aiolock-hold URL KEY")
	}
	url, key := args[0], args[1]
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
	// A line or EOF: release. A read error also ends the hold (the lock must go).
	_, _ = bufio.NewReader(os.Stdin).ReadString('\n')
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
