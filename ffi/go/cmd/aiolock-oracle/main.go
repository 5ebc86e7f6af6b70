// Command aiolock-oracle is the Go process of the cross-language exclusion oracle
// (tests/exclusive/mod.rs, cross_process_oracle, run with this program by
// ffi/test.sh): THREADS goroutines take the exclusive lock "mutex" of the cache at
// URL ENTRIES times each, through Cache.Lock and Cache.TryLock, and mark every entry
// and exit in the shared record FILE, as the Rust and C processes do: one write of
// "E ID.THREAD\n", then of "X ID.THREAD\n", on an O_APPEND file. The Rust test checks
// that the lines pair up: never two callers inside.
//
//	aiolock-oracle URL FILE ID THREADS ENTRIES
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"sync"
	"time"

	aiolock "aiolock.dev/ffi/go"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "aiolock-oracle:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	if len(args) != 5 {
		return fmt.Errorf("usage: aiolock-oracle URL FILE ID THREADS ENTRIES")
	}
	url, file, id := args[0], args[1], args[2]
	threads, err1 := strconv.Atoi(args[3])
	entries, err2 := strconv.Atoi(args[4])
	if err1 != nil || err2 != nil || threads < 1 || entries < 1 {
		return fmt.Errorf("bad THREADS or ENTRIES: %q %q", args[3], args[4])
	}
	cache, err := aiolock.Open(url)
	if err != nil {
		return err
	}
	defer cache.Close()
	errs := make(chan error, threads)
	var wg sync.WaitGroup
	for t := 0; t < threads; t++ {
		wg.Add(1)
		go func(t int) {
			defer wg.Done()
			if err := work(cache, file, fmt.Sprintf("%s.%d", id, t), entries); err != nil {
				errs <- fmt.Errorf("%s.%d: %w", id, t, err)
			}
		}(t)
	}
	wg.Wait()
	close(errs)
	return <-errs // nil when every goroutine succeeded
}

func work(cache *aiolock.Cache, file, me string, entries int) error {
	f, err := os.OpenFile(file, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	for i := 0; i < entries; i++ {
		lock, err := lock(cache, i)
		if err != nil {
			return err
		}
		if _, err := f.Write([]byte("E " + me + "\n")); err != nil {
			return err
		}
		if _, err := f.Write([]byte("X " + me + "\n")); err != nil {
			return err
		}
		removed, err := lock.Release()
		if err != nil {
			return err
		}
		if !removed {
			return errors.New("the lease ended before the release")
		}
	}
	return nil
}

// lock takes the lock: every other entry tries once first, then waits (at most
// 120 s, the Rust processes' bound).
func lock(cache *aiolock.Cache, i int) (*aiolock.Exclusive, error) {
	if i%2 == 0 {
		l, err := cache.TryLock("mutex", 30*time.Second)
		if !errors.Is(err, aiolock.ErrNotAcquired) {
			return l, err
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	return cache.Lock(ctx, "mutex", 30*time.Second)
}
