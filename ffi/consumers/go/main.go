// A program outside the repository that requires the aiolock Go module, built against
// an installed libaiolock (found by pkg-config). ffi/install-test.sh adds the module
// with `go get aiolock.dev/ffi/go@vVERSION`, builds and runs it.
// Usage: consumer VERSION.
package main

import (
	"errors"
	"fmt"
	"os"
	"time"

	aiolock "aiolock.dev/ffi/go"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "go consumer:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	if len(args) != 1 || aiolock.Version() != args[0] {
		return fmt.Errorf("libaiolock %s, expected %v", aiolock.Version(), args)
	}
	cache, err := aiolock.Open("memory://?namespace=consumer:")
	if err != nil {
		return err
	}
	defer cache.Close()
	lock, err := cache.Acquire("job", 30*time.Second)
	if err != nil {
		return err
	}
	if lock.Outcome() != aiolock.Acquired {
		return fmt.Errorf("not acquired: %v", lock.Outcome())
	}
	if _, err := cache.TryLock("job", 30*time.Second); !errors.Is(err, aiolock.ErrNotAcquired) {
		return fmt.Errorf("a held key was taken again (%v)", err)
	}
	removed, err := lock.Release()
	if err != nil {
		return err
	}
	if !removed {
		return errors.New("the release removed nothing")
	}
	fmt.Printf("go: acquired, held, released (libaiolock %s)\n", aiolock.Version())
	return nil
}
