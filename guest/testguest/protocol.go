package testguest

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
)

// Request ops.
const (
	OpTouch = "touch"
	OpRead  = "read"
	OpExit  = "exit"
)

// Request is one request to the guest over vsock. For touch, the guest
// touches heap pages Start, Start+Stride, ... (Count of them; Stride 0
// touches Start Count times); with Write it first adds 1 to each page's
// word 0, then hashes the page. Read does the same over the initrd's
// pages (4096 bytes each from the initrd's start, the last one
// zero-padded) without writing. Bytes (1..PageSize) hashes only the first
// Bytes bytes of each page; 0 means all of it. Every field but Bytes is
// always sent (the guest's defaults for absent keys are start 0, count 1,
// stride 1, write false, bytes 4096), so touch and exit requests encode
// as before Bytes existed.
type Request struct {
	ID     uint64 `json:"id"`
	Op     string `json:"op"`
	Start  uint64 `json:"start"`
	Count  uint64 `json:"count"`
	Stride uint64 `json:"stride"`
	Write  bool   `json:"write"`
	Bytes  uint64 `json:"bytes,omitempty"`
}

// Response is the guest's answer: {"id","pages","checksum"} for touch and
// read, {"id","ok":true} for exit, {"id","error"} for a rejected request.
// Checksum is FNV-1a 64 over every touched page (its first Bytes bytes) in
// touch order (after the write), as 16 hex digits.
type Response struct {
	ID       uint64 `json:"id"`
	Pages    uint64 `json:"pages,omitempty"`
	Checksum string `json:"checksum,omitempty"`
	OK       bool   `json:"ok,omitempty"`
	Error    string `json:"error,omitempty"`
}

// TouchRequest and ExitRequest build requests.
func TouchRequest(id, start, count, stride uint64, write bool) Request {
	return Request{ID: id, Op: OpTouch, Start: start, Count: count, Stride: stride, Write: write}
}

// ReadRequest builds a read of initrd pages start, start+stride, ...
// (count of them), hashing the first bytes bytes of each (0: all 4096).
func ReadRequest(id, start, count, stride, bytes uint64) Request {
	return Request{ID: id, Op: OpRead, Start: start, Count: count, Stride: stride, Bytes: bytes}
}

// ExitRequest asks the guest to answer and shut down (i8042 reset).
func ExitRequest(id uint64) Request { return Request{ID: id, Op: OpExit} }

// MaxFrame is the longest frame ReadFrame accepts.
const MaxFrame = 1 << 20

// ErrFrameTooLarge: a frame's length exceeds MaxFrame.
var ErrFrameTooLarge = errors.New("testguest: frame too large")

// EncodeFrame returns payload preceded by its length as a big-endian
// uint32.
func EncodeFrame(payload []byte) []byte {
	b := make([]byte, 4+len(payload))
	binary.BigEndian.PutUint32(b, uint32(len(payload)))
	copy(b[4:], payload)
	return b
}

// ReadFrame reads one frame and returns its payload.
func ReadFrame(r io.Reader) ([]byte, error) {
	var h [4]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return nil, err
	}
	n := binary.BigEndian.Uint32(h[:])
	if n > MaxFrame {
		return nil, fmt.Errorf("%w: %d bytes", ErrFrameTooLarge, n)
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(r, b); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	return b, nil
}

// WriteRequest writes req as one frame.
func WriteRequest(w io.Writer, req Request) error {
	b, err := json.Marshal(req)
	if err != nil {
		return err
	}
	_, err = w.Write(EncodeFrame(b))
	return err
}

// ReadResponse reads one response frame.
func ReadResponse(r io.Reader) (Response, error) {
	b, err := ReadFrame(r)
	if err != nil {
		return Response{}, err
	}
	var resp Response
	if err := json.Unmarshal(b, &resp); err != nil {
		return Response{}, fmt.Errorf("testguest: response %q: %w", b, err)
	}
	return resp, nil
}

// Call writes req and reads its response, checking the id.
func Call(rw io.ReadWriter, req Request) (Response, error) {
	if err := WriteRequest(rw, req); err != nil {
		return Response{}, err
	}
	resp, err := ReadResponse(rw)
	if err != nil {
		return Response{}, err
	}
	if resp.ID != req.ID {
		return resp, fmt.Errorf("testguest: response id %d for request %d", resp.ID, req.ID)
	}
	return resp, nil
}
