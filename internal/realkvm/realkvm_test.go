package realkvm

import (
	"github.com/snapfaas/snapfaas/vmm/kvm"
	"strings"
	"testing"
)

func TestKind(t *testing.T) {
	for dir, want := range map[string]string{"pvm": "kvm_pvm", "amd": "kvm_amd", "none": "", "missing": ""} {
		if got := kvm.HostModule("testdata/sys/" + dir); got != want {
			t.Errorf("%s: %q, want %q", dir, got, want)
		}
	}
}

func TestParse(t *testing.T) {
	out := `realkvm-ish noise
=== RUN   TestLinuxBoot
    linux_test.go:10: booted
=== RUN   TestLinuxBoot/sub
    --- FAIL: TestLinuxBoot/sub (0.00s)
--- PASS: TestLinuxBoot (12.30s)
=== RUN   TestLinuxSnapshot
    linux_test.go:20: lazy restore: guest page 5 is already present
--- FAIL: TestLinuxSnapshot (3.00s)
=== RUN   TestLinuxNoKernel
    linux_test.go:30: cannot fetch
--- SKIP: TestLinuxNoKernel (0.01s)
=== RUN   TestLinuxHung
panic: test timed out after 40m0s
`
	r := parse(out)
	for name, want := range map[string]string{"TestLinuxBoot": "PASS", "TestLinuxSnapshot": "FAIL", "TestLinuxNoKernel": "SKIP"} {
		if got := r.tests[name]; got.result != want || !strings.HasPrefix(got.output, "=== RUN   "+name+"\n") {
			t.Errorf("%s: %+v, want %s", name, got, want)
		}
	}
	if !strings.Contains(r.tests["TestLinuxSnapshot"].output, "already present") {
		t.Errorf("TestLinuxSnapshot's output lost: %q", r.tests["TestLinuxSnapshot"].output)
	}
	if _, ok := r.tests["TestLinuxHung"]; ok {
		t.Error("a test that never ended has a result")
	}
	if len(r.tests) != 3 {
		t.Errorf("%d results, want 3: %v", len(r.tests), r.tests)
	}
}
