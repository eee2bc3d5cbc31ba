package corpus

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"strconv"
	"strings"
	"syscall"
)

const captureSupported = true

// mapping is one line of /proc/PID/maps.
type mapping struct {
	start, end uint64
	perms      string
	path       string
}

// parseMaps parses the contents of /proc/PID/maps.
func parseMaps(r io.Reader) ([]mapping, error) {
	var out []mapping
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		fields := strings.Fields(line)
		if len(fields) < 5 {
			continue
		}
		lo, hi, ok := strings.Cut(fields[0], "-")
		if !ok {
			return nil, fmt.Errorf("bad maps line %q", line)
		}
		start, err := strconv.ParseUint(lo, 16, 64)
		if err != nil {
			return nil, fmt.Errorf("bad maps line %q: %w", line, err)
		}
		end, err := strconv.ParseUint(hi, 16, 64)
		if err != nil {
			return nil, fmt.Errorf("bad maps line %q: %w", line, err)
		}
		m := mapping{start: start, end: end, perms: fields[1]}
		if len(fields) >= 6 {
			m.path = strings.Join(fields[5:], " ")
		}
		out = append(out, m)
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	return out, nil
}

// wanted reports whether a mapping's bytes belong in the image.
func (m mapping) wanted() bool {
	if m.end <= m.start || m.end > math.MaxInt64 || !strings.HasPrefix(m.perms, "r") {
		return false
	}
	switch m.path {
	case "[vvar]", "[vvar_vclock]", "[vsyscall]":
		return false
	}
	// Device mappings (GPU, framebuffers, ...) are not memory; reading
	// them is at best useless. Shared memory and /dev/zero are fine.
	if strings.HasPrefix(m.path, "/dev/") && !strings.HasPrefix(m.path, "/dev/shm/") &&
		!strings.HasPrefix(m.path, "/dev/zero") {
		return false
	}
	return true
}

const copyChunk = 1 << 20

// captureProcess copies pid's readable mappings into iw, separated by
// gapPages zero pages, and returns the number of regions written.
func captureProcess(ctx context.Context, pid int, iw *imageWriter, gapPages int) (int, error) {
	mapsPath := fmt.Sprintf("/proc/%d/maps", pid)
	mapsData, err := os.ReadFile(mapsPath)
	if err != nil {
		return 0, fmt.Errorf("read %s: %w", mapsPath, err)
	}
	maps, err := parseMaps(strings.NewReader(string(mapsData)))
	if err != nil {
		return 0, fmt.Errorf("parse %s: %w", mapsPath, err)
	}
	memPath := fmt.Sprintf("/proc/%d/mem", pid)
	mem, err := os.Open(memPath)
	if err != nil {
		return 0, fmt.Errorf("open %s: %w", memPath, err)
	}
	defer mem.Close()

	buf := make([]byte, copyChunk)
	regions := 0
	for _, m := range maps {
		if !m.wanted() {
			continue
		}
		if iw.remaining() == 0 {
			break
		}
		if regions > 0 {
			if err := iw.writeZeros(int64(gapPages) * PageSize); err != nil {
				return regions, fmt.Errorf("write gap: %w", err)
			}
			if iw.remaining() == 0 {
				break
			}
		}
		regions++
		for addr := m.start; addr < m.end && iw.remaining() > 0; {
			if err := ctx.Err(); err != nil {
				return regions, err
			}
			n := min(uint64(len(buf)), m.end-addr, uint64(iw.remaining()))
			chunk := buf[:n]
			if err := readMem(mem, chunk, int64(addr)); err != nil {
				return regions, fmt.Errorf("read %s at %#x (%s %s): %w", memPath, addr, m.perms, m.path, err)
			}
			if _, err := iw.writeData(chunk); err != nil {
				return regions, fmt.Errorf("write image: %w", err)
			}
			addr += n
		}
	}
	return regions, nil
}

// readMem fills p from mem at addr. If the bulk read fails, it retries page
// by page and zero-fills pages that cannot be read (EIO/EFAULT, e.g. file
// mappings beyond the end of the file). Other errors, including EOF (the
// process is gone), are returned.
func readMem(mem *os.File, p []byte, addr int64) error {
	if _, err := mem.ReadAt(p, addr); err == nil {
		return nil
	}
	for i := 0; i < len(p); i += PageSize {
		pg := p[i:min(i+PageSize, len(p))]
		_, err := mem.ReadAt(pg, addr+int64(i))
		switch {
		case err == nil:
		case errors.Is(err, syscall.EIO), errors.Is(err, syscall.EFAULT):
			clear(pg)
		default:
			return err
		}
	}
	return nil
}
