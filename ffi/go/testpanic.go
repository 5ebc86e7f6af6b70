//go:build aiolock_test_panic

// Built only with -tags aiolock_test_panic, against a library built with the cargo
// feature test-panic (ffi/test.sh does both).

package aiolock

/*
#define AIOLOCK_TEST_PANIC 1
#include "aiolock.h"
*/
import "C"

// testPanic makes the library panic inside its boundary.
func testPanic() error {
	return call(func() C.enum_aiolock_status { return C.aiolock_test_panic() })
}
