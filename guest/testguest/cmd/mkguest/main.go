// Command mkguest builds the freestanding test guest and copies its ELF to
// OUT, for booting by hand: snapfaas vmm --kernel OUT.
package main

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/snapfaas/snapfaas/guest/testguest"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: mkguest OUT")
		os.Exit(2)
	}
	elf, err := testguest.Build(filepath.Join(os.TempDir(), "snapfaas-testguest"))
	if err != nil {
		fmt.Fprintf(os.Stderr, "mkguest: %v\n", err)
		os.Exit(1)
	}
	b, err := os.ReadFile(elf)
	if err == nil {
		err = os.WriteFile(os.Args[1], b, 0o755)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "mkguest: %v\n", err)
		os.Exit(1)
	}
}
