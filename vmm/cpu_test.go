package vmm

import (
	"testing"

	"github.com/snapfaas/snapfaas/vmm/kvm"
)

func TestGuestCPUIDHidesAsyncPageFaults(t *testing.T) {
	supported := []kvm.CPUIDEntry{
		{Function: 0x40000000, EAX: 0x40000001, EBX: 0x4b4d564b},
		{Function: 0x40000001, EAX: 0xffffffff},
	}
	for _, hide := range []bool{false, true} {
		out := guestCPUID(supported, 0, 1, hide)
		if len(out) != 2 {
			t.Fatalf("hide=%v: %d entries, want 2", hide, len(out))
		}
		if got := out[1].EAX; got&hiddenKVMFeatures != 0 || got|hiddenKVMFeatures != 0xffffffff {
			t.Errorf("hide=%v: KVM features %#x: want exactly async PF (%#x) cleared", hide, got, hiddenKVMFeatures)
		}
	}
}
