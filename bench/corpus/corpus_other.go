//go:build !linux

package corpus

import (
	"context"
	"errors"
	"fmt"
)

const captureSupported = false

func captureProcess(ctx context.Context, pid int, iw *imageWriter, gapPages int) (int, error) {
	return 0, fmt.Errorf("reading process memory needs /proc: %w", errors.ErrUnsupported)
}
