//go:build !linux

// Command fusebench measures serving disk images through fusefs; it needs
// Linux (FUSE, loop devices, /proc/sys/vm/drop_caches).
package main

import (
	"fmt"
	"os"
)

func main() {
	fmt.Fprintln(os.Stderr, "fusebench: needs Linux (FUSE, loop devices, drop_caches)")
	os.Exit(2)
}
