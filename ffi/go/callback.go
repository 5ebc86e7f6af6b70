package aiolock

// The library's loss callback, exported to C. A file with //export may only declare
// in its preamble; the trampoline that the library calls is in aiolock.go.

/*
#include <stdint.h>
*/
import "C"

import "runtime/cgo"

// aiolockGoLost is called by the library's watchdog thread, at most once per watcher
// and never after the guard's release returned (which deletes the handle). It must
// not block: finish sends on a buffered channel and closes it.
//
//export aiolockGoLost
func aiolockGoLost(handle C.uintptr_t, status C.int, message *C.char) {
	w := cgo.Handle(handle).Value().(*watcher)
	w.finish(&Error{Status: Status(status), Message: C.GoString(message)})
}
