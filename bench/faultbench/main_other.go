//go:build !linux

// Command faultbench measures the page server through userfaultfd; it runs
// on Linux only.
package main

import (
	"fmt"
	"os"
)

func main() {
	fmt.Fprintln(os.Stderr, "faultbench: needs Linux (userfaultfd)")
	os.Exit(1)
}
