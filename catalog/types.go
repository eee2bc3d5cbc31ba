package catalog

import (
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"time"
)

// Hash is the SHA-256 of a chunk's uncompressed bytes: its address.
type Hash [32]byte

// ZeroHash stands for a chunk or page of zeros in an image's chunk list.
// Zero data is recorded, never stored.
var ZeroHash Hash

// String returns the hash in hex.
func (h Hash) String() string { return hex.EncodeToString(h[:]) }

// Short returns the first 12 hex digits, for messages.
func (h Hash) Short() string { return hex.EncodeToString(h[:6]) }

// IsZero reports whether h is ZeroHash.
func (h Hash) IsZero() bool { return h == ZeroHash }

// ParseHash parses a 64-digit hex hash.
func ParseHash(s string) (Hash, error) {
	var h Hash
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != len(h) {
		return h, fmt.Errorf("hash %q: not 64 hex digits", s)
	}
	copy(h[:], b)
	return h, nil
}

// Loc says where a chunk's record lives. Codec is interpreted by pagestore.
type Loc struct {
	Pack   uint32
	Offset int64
	CLen   uint32 // compressed payload length
	ULen   uint32 // uncompressed length
	Codec  uint8
}

const locSize = 4 + 8 + 4 + 4 + 1

func (l Loc) marshal() []byte {
	b := make([]byte, locSize)
	binary.BigEndian.PutUint32(b[0:], l.Pack)
	binary.BigEndian.PutUint64(b[4:], uint64(l.Offset))
	binary.BigEndian.PutUint32(b[12:], l.CLen)
	binary.BigEndian.PutUint32(b[16:], l.ULen)
	b[20] = l.Codec
	return b
}

func unmarshalLoc(b []byte) (Loc, error) {
	if len(b) != locSize {
		return Loc{}, fmt.Errorf("chunk location: %d bytes, want %d: %w", len(b), locSize, ErrCorrupt)
	}
	return Loc{
		Pack:   binary.BigEndian.Uint32(b[0:]),
		Offset: int64(binary.BigEndian.Uint64(b[4:])),
		CLen:   binary.BigEndian.Uint32(b[12:]),
		ULen:   binary.BigEndian.Uint32(b[16:]),
		Codec:  b[20],
	}, nil
}

// ImageInfo describes a disk image: a file cut into fixed-size chunks.
type ImageInfo struct {
	Name      string            `json:"name"`
	Size      int64             `json:"size"`
	ChunkSize int               `json:"chunk_size"`
	Created   time.Time         `json:"created"`
	Labels    map[string]string `json:"labels,omitempty"`
}

// Image is an image with its chunk list: chunk i holds bytes
// [i*ChunkSize, min((i+1)*ChunkSize, Size)); ZeroHash marks a zero chunk.
type Image struct {
	ImageInfo
	Chunks []Hash
}

// Kind is the kind of a memory snapshot.
type Kind string

// Snapshot kinds.
const (
	// KindBase is a complete memory image with no parent (a language or
	// runtime snapshot).
	KindBase Kind = "base"
	// KindDiff holds only the pages that differ from its parent; the rest
	// resolve through the parent chain.
	KindDiff Kind = "diff"
	// KindFull is a complete memory image that names the snapshot it was
	// derived from for information only (SnapFaaS's full-app snapshot).
	KindFull Kind = "full"
)

// Valid reports whether k is a known kind.
func (k Kind) Valid() bool { return k == KindBase || k == KindDiff || k == KindFull }

// PageSize is the guest page size every snapshot is indexed by.
const PageSize = 4096

// SnapshotInfo describes a memory snapshot.
type SnapshotInfo struct {
	Name   string `json:"name"`
	Kind   Kind   `json:"kind"`
	Parent string `json:"parent,omitempty"`
	// MemSize is the guest memory size in bytes (a multiple of PageSize).
	MemSize int64 `json:"mem_size"`
	// Granularity is the largest chunk, in bytes, that memory was cut into.
	Granularity int               `json:"granularity"`
	Created     time.Time         `json:"created"`
	Labels      map[string]string `json:"labels,omitempty"`
}

// Pages returns the number of guest pages.
func (s SnapshotInfo) Pages() int64 { return s.MemSize / PageSize }

// Extent maps Count guest pages starting at Page to consecutive pages of a
// chunk in the layer's chunk table, starting at page Off of that chunk.
// Chunk == ZeroChunk means the pages are zero.
type Extent struct {
	Page  uint64
	Count uint32
	Chunk int32
	Off   uint32
}

// ZeroChunk is Extent.Chunk for pages that are zero.
const ZeroChunk int32 = -1

// End returns the first page after the extent.
func (e Extent) End() uint64 { return e.Page + uint64(e.Count) }

// Snapshot is a memory snapshot layer with everything stored on it.
//
// Pages not covered by an extent are inherited from Parent for a diff
// snapshot, and zero otherwise.
type Snapshot struct {
	SnapshotInfo
	Chunks     []Hash
	Extents    []Extent
	VMConfig   []byte
	VMState    []byte
	WorkingSet []uint32
}

// Function is a deployable function: the images and snapshots it runs from.
type Function struct {
	Name         string            `json:"name"`
	Runtime      string            `json:"runtime,omitempty"`       // rootfs image
	App          string            `json:"app,omitempty"`           // appfs image
	BaseSnapshot string            `json:"base_snapshot,omitempty"` // language snapshot
	Snapshot     string            `json:"snapshot,omitempty"`      // function (diff) snapshot
	MemMiB       int               `json:"mem_mib,omitempty"`
	VCPUs        int               `json:"vcpus,omitempty"`
	Concurrency  int               `json:"concurrency,omitempty"`
	Created      time.Time         `json:"created"`
	Labels       map[string]string `json:"labels,omitempty"`
}

// Refs returns the objects the function names.
func (f Function) Refs() []ObjectRef {
	var refs []ObjectRef
	for _, n := range []string{f.Runtime, f.App} {
		if n != "" {
			refs = append(refs, ImageRef(n))
		}
	}
	for _, n := range []string{f.BaseSnapshot, f.Snapshot} {
		if n != "" {
			refs = append(refs, SnapshotRef(n))
		}
	}
	return refs
}

// ObjectRef names an image or snapshot: "image/NAME" or "snapshot/NAME".
type ObjectRef string

// ImageRef returns the reference to image name.
func ImageRef(name string) ObjectRef { return ObjectRef("image/" + name) }

// SnapshotRef returns the reference to snapshot name.
func SnapshotRef(name string) ObjectRef { return ObjectRef("snapshot/" + name) }

// LeaseInfo describes a lease: a temporary root for garbage collection that
// protects an import in progress or a running VM.
type LeaseInfo struct {
	ID    string `json:"id"`
	Owner string `json:"owner"`
	// PID is the process that holds the lease; when it is gone the lease is
	// stale. Zero means no process check.
	PID     int       `json:"pid,omitempty"`
	Created time.Time `json:"created"`
	// Expires is when the lease stops protecting anything. Zero: never.
	Expires time.Time `json:"expires,omitempty"`
}

// Lease is a lease with what it holds.
type Lease struct {
	LeaseInfo
	Objects []ObjectRef
	Chunks  []Hash
}

var errShortBlob = errors.New("truncated blob")

func marshalHashes(hs []Hash) []byte {
	b := make([]byte, 0, len(hs)*len(Hash{}))
	for _, h := range hs {
		b = append(b, h[:]...)
	}
	return b
}

func unmarshalHashes(b []byte) ([]Hash, error) {
	if len(b)%len(Hash{}) != 0 {
		return nil, fmt.Errorf("hash list of %d bytes: %w", len(b), ErrCorrupt)
	}
	hs := make([]Hash, len(b)/len(Hash{}))
	for i := range hs {
		copy(hs[i][:], b[i*len(Hash{}):])
	}
	return hs, nil
}

func marshalExtents(es []Extent) []byte {
	b := binary.AppendUvarint(nil, uint64(len(es)))
	var prevEnd uint64
	for _, e := range es {
		b = binary.AppendUvarint(b, e.Page-prevEnd)
		b = binary.AppendUvarint(b, uint64(e.Count))
		b = binary.AppendUvarint(b, uint64(int64(e.Chunk)+1))
		b = binary.AppendUvarint(b, uint64(e.Off))
		prevEnd = e.End()
	}
	return b
}

func unmarshalExtents(b []byte) ([]Extent, error) {
	next := func() (uint64, error) {
		v, n := binary.Uvarint(b)
		if n <= 0 {
			return 0, errShortBlob
		}
		b = b[n:]
		return v, nil
	}
	n, err := next()
	if err != nil {
		if len(b) == 0 {
			return nil, nil
		}
		return nil, fmt.Errorf("extents: %w: %w", err, ErrCorrupt)
	}
	if n > uint64(len(b)) {
		return nil, fmt.Errorf("extents: count %d exceeds data: %w", n, ErrCorrupt)
	}
	es := make([]Extent, 0, n)
	var prevEnd uint64
	for i := uint64(0); i < n; i++ {
		var v [4]uint64
		for j := range v {
			if v[j], err = next(); err != nil {
				return nil, fmt.Errorf("extent %d: %w: %w", i, err, ErrCorrupt)
			}
		}
		e := Extent{Page: prevEnd + v[0], Count: uint32(v[1]), Chunk: int32(int64(v[2]) - 1), Off: uint32(v[3])}
		es = append(es, e)
		prevEnd = e.End()
	}
	return es, nil
}

func marshalPages(ps []uint32) []byte {
	b := make([]byte, 4*len(ps))
	for i, p := range ps {
		binary.BigEndian.PutUint32(b[4*i:], p)
	}
	return b
}

func unmarshalPages(b []byte) ([]uint32, error) {
	if len(b)%4 != 0 {
		return nil, fmt.Errorf("working set of %d bytes: %w", len(b), ErrCorrupt)
	}
	ps := make([]uint32, len(b)/4)
	for i := range ps {
		ps[i] = binary.BigEndian.Uint32(b[4*i:])
	}
	return ps, nil
}
