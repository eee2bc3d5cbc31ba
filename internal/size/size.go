// Package size reads byte counts as people write them on command lines
// ("64K", "128MiB", "1g").
package size

import (
	"fmt"
	"math"
	"strconv"
	"strings"
)

// Parse parses a byte count: plain digits or digits with a binary
// suffix (K, KB, KiB, M, MB, MiB, G, GB, GiB, T, TB, TiB; case-insensitive).
func Parse(s string) (int64, error) {
	t := strings.TrimSpace(s)
	i := 0
	for i < len(t) && t[i] >= '0' && t[i] <= '9' {
		i++
	}
	if i == 0 {
		return 0, fmt.Errorf("invalid size %q: want bytes or a number with K/M/G/T suffix", s)
	}
	n, err := strconv.ParseInt(t[:i], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("invalid size %q: %w", s, err)
	}
	var shift uint
	switch strings.ToLower(strings.TrimSpace(t[i:])) {
	case "", "b":
	case "k", "kb", "kib":
		shift = 10
	case "m", "mb", "mib":
		shift = 20
	case "g", "gb", "gib":
		shift = 30
	case "t", "tb", "tib":
		shift = 40
	default:
		return 0, fmt.Errorf("invalid size %q: unknown suffix %q (want K, M, G or T)", s, t[i:])
	}
	if n > math.MaxInt64>>shift {
		return 0, fmt.Errorf("invalid size %q: too large", s)
	}
	return n << shift, nil
}
