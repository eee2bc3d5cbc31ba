package pagestore

import "os"

// Crash points. Every step of a write operation (import, gc) that changes
// a file or commits the catalog is followed by crashPoint naming it. The
// crash test (crash_test.go) kills a child process at each point in turn,
// with and without losing what was not fsynced, and checks that the store
// still verifies; it finds the calls in this package's source, so a new
// step without a test case fails it. Names are literals, "area/step".

// crashHook, set by the crash test's child process only, is called at each
// crash point.
var crashHook func(point string)

func crashPoint(point string) {
	if crashHook != nil {
		crashHook(point)
	}
}

// syncFile is (*os.File).Sync for pack files and the chunks directory: a
// variable so that the crash test knows what was durable when it pulls the
// plug.
var syncFile = (*os.File).Sync
