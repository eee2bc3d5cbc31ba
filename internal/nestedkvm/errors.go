package nestedkvm

import "errors"

// Sentinels: every error Run and the Ensure functions return wraps one.
var (
	ErrTools       = errors.New("missing tools")   // no qemu or static busybox, and cannot install them
	ErrKernel      = errors.New("L1 kernel")       // fetching, extracting or packing the kernel and its modules
	ErrKVM         = errors.New("kvm_amd refused") // insmod of the KVM modules failed in L1
	ErrL1          = errors.New("L1 failed")       // QEMU or L1 stopped before COMMAND's status was known
	ErrTimeout     = errors.New("timeout")         // Config.Timeout expired
	ErrInterrupted = errors.New("interrupted")     // the context was cancelled (a signal)
)

// ExitCode is the exit status cmd/nestedkvm uses for err: 121–125 for the
// harness's own failures (COMMAND's 126 and 127 keep their shell meaning),
// 1 for anything else. An interrupt exits 128+signal (the caller knows it).
func ExitCode(err error) int {
	switch {
	case errors.Is(err, ErrTools):
		return 121
	case errors.Is(err, ErrKernel):
		return 122
	case errors.Is(err, ErrKVM):
		return 123
	case errors.Is(err, ErrTimeout):
		return 124
	case errors.Is(err, ErrL1):
		return 125
	}
	return 1
}
