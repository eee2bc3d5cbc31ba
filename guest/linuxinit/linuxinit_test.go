package linuxinit

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

func TestBuildWritesAnInitramfs(t *testing.T) {
	out := filepath.Join(t.TempDir(), "initrd")
	if err := Build(out); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"070701", "dev/console\x00", "init\x00", "TRAILER!!!\x00", "\x7fELF"} {
		if !bytes.Contains(b, []byte(want)) {
			t.Errorf("initramfs lacks %q", want)
		}
	}
	if len(b)%4 != 0 {
		t.Errorf("archive length %d is not 4-aligned", len(b))
	}
	if len(Checksum()) != 16 {
		t.Errorf("checksum %q", Checksum())
	}
}

func TestBuildServeAddsTheModules(t *testing.T) {
	if testing.Short() {
		t.Skip("fetches Debian's cloud kernel; not in -short")
	}
	k, err := StockKernel()
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "initrd")
	if err := BuildServe(out, k); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range Modules {
		if !bytes.Contains(b, []byte("lib/modules/"+m+".ko\x00")) {
			t.Errorf("initramfs lacks %s.ko", m)
		}
	}
	if !bytes.Contains(b, []byte("lib/modules/order\x00")) {
		t.Errorf("initramfs lacks lib/modules/order")
	}
}
