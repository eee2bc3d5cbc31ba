//go:build !linux

package main

import (
	"errors"
	"os"
)

func dropCaches() error {
	return errors.New("dropping the OS page cache needs Linux /proc/sys/vm/drop_caches")
}

type residency struct{}

func newResidency(*os.File) *residency { return nil }

func (r *residency) resident(int64) (bool, error) { return false, errors.ErrUnsupported }

func (r *residency) close() {}
