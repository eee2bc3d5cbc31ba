package cpio

import (
	"bytes"
	"testing"
)

// TestLayout checks the bytes of a small archive against the newc format:
// header fields, name and data padding, trailer.
func TestLayout(t *testing.T) {
	var b bytes.Buffer
	w := NewWriter(&b)
	w.Dir("dev", 0o755)
	w.CharDev("dev/console", 0o600, 5, 1)
	w.File("init", 0o755, []byte("hello"))
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	want := "070701" + "00000001" + "000041ed" + "00000000" + "00000000" + "00000001" + "00000000" + "00000000" + "00000000" + "00000000" + "00000000" + "00000000" + "00000004" + "00000000" + "dev\x00" + "\x00\x00" +
		"070701" + "00000002" + "00002180" + "00000000" + "00000000" + "00000001" + "00000000" + "00000000" + "00000000" + "00000000" + "00000005" + "00000001" + "0000000c" + "00000000" + "dev/console\x00" + "\x00\x00" +
		"070701" + "00000003" + "000081ed" + "00000000" + "00000000" + "00000001" + "00000000" + "00000005" + "00000000" + "00000000" + "00000000" + "00000000" + "00000005" + "00000000" + "init\x00" + "\x00" + "hello" + "\x00\x00\x00" +
		"070701" + "00000004" + "00000000" + "00000000" + "00000000" + "00000001" + "00000000" + "00000000" + "00000000" + "00000000" + "00000000" + "00000000" + "0000000b" + "00000000" + "TRAILER!!!\x00" + "\x00\x00\x00"
	if got := b.String(); got != want {
		t.Fatalf("archive:\n got %q\nwant %q", got, want)
	}
}
