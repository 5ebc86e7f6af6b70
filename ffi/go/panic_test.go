//go:build aiolock_test_panic

package aiolock

import (
	"errors"
	"strings"
	"testing"
)

// A Rust panic inside a call is an ErrPanic, and the process goes on.
func TestPanicIsAnErrorAndTheProcessLives(t *testing.T) {
	err := testPanic()
	if !errors.Is(err, ErrPanic) || !strings.Contains(err.Error(), "panicked") {
		t.Fatalf("want ErrPanic, got %v", err)
	}
	c := open(t)
	if added, err := c.Add("after-panic", []byte("v"), 0); err != nil || !added {
		t.Fatalf("after the panic: %v %v", added, err)
	}
}
