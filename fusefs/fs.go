package fusefs

import (
	"context"
	"encoding/json"
	"errors"
	"hash/fnv"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/snapfaas/snapfaas/catalog"
	"github.com/snapfaas/snapfaas/pagestore"
)

// Timeouts. Names change (imports, removals) so directory entries are
// short-lived; an inode's content never changes, so attributes of content
// files are cached long. Generated files (info.json) use direct I/O.
const (
	entryTimeout   = time.Second
	negTimeout     = 500 * time.Millisecond
	contentTimeout = time.Hour
)

// view is what every node shares.
type view struct {
	s       *pagestore.Store
	log     *slog.Logger
	mounted time.Time
}

// topDir is a directory whose times are the mount's.
type topDir struct {
	fs.Inode
	v *view
}

var _ = (fs.NodeGetattrer)((*topDir)(nil))

func (d *topDir) Getattr(ctx context.Context, fh fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	dirAttr(&out.Attr)
	setTime(&out.Attr, d.v.mounted)
	return 0
}

// ino derives a stable inode number from an object's identity. A name that
// is removed and imported again is a different object (another creation
// time), hence another inode, so the kernel never serves the old object's
// cached pages for the new one.
func ino(parts ...string) uint64 {
	h := fnv.New64a()
	for _, p := range parts {
		h.Write([]byte(p))
		h.Write([]byte{0})
	}
	return h.Sum64() | 1<<62 // away from go-fuse's automatic numbers (2^63+)
}

func errno(v *view, what string, err error) syscall.Errno {
	switch {
	case err == nil:
		return 0
	case errors.Is(err, catalog.ErrNotFound):
		return syscall.ENOENT
	case errors.Is(err, pagestore.ErrCorrupt):
		v.log.Error("read failed: corrupt data", "path", what, "err", err)
		return syscall.EIO
	}
	v.log.Error("operation failed", "path", what, "err", err)
	return syscall.EIO
}

func dirAttr(out *fuse.Attr) { out.Mode = syscall.S_IFDIR | 0o555 }

func setTime(out *fuse.Attr, t time.Time) {
	out.SetTimes(&t, &t, &t)
}

// root is the mount's root directory: images/, snapshots/, functions/.
type root struct {
	topDir
}

var _ = (fs.NodeOnAdder)((*root)(nil))

func (r *root) OnAdd(ctx context.Context) {
	for name, node := range map[string]fs.InodeEmbedder{
		"images":    &imagesDir{topDir{v: r.v}},
		"snapshots": &snapshotsDir{topDir{v: r.v}},
		"functions": &functionsDir{topDir{v: r.v}},
	} {
		r.AddChild(name, r.NewPersistentInode(ctx, node, fs.StableAttr{Mode: syscall.S_IFDIR, Ino: ino("dir", name)}), false)
	}
}

// ---- images/ ----

type imagesDir struct {
	topDir
}

var (
	_ = (fs.NodeLookuper)((*imagesDir)(nil))
	_ = (fs.NodeReaddirer)((*imagesDir)(nil))
)

func (d *imagesDir) Readdir(ctx context.Context) (fs.DirStream, syscall.Errno) {
	var entries []fuse.DirEntry
	err := d.v.s.Catalog().View(func(tx *catalog.Tx) error {
		imgs, err := tx.Images()
		for _, i := range imgs {
			entries = append(entries, fuse.DirEntry{Name: i.Name, Mode: syscall.S_IFREG, Ino: ino("image", i.Name, i.Created.String())})
		}
		return err
	})
	if err != nil {
		return nil, errno(d.v, "images", err)
	}
	return fs.NewListDirStream(entries), 0
}

func (d *imagesDir) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	var info catalog.ImageInfo
	err := d.v.s.Catalog().View(func(tx *catalog.Tx) (err error) {
		info, err = tx.ImageInfo(name)
		return err
	})
	if err != nil {
		return nil, errno(d.v, "images/"+name, err)
	}
	n := &imageFile{v: d.v, info: info}
	n.attr(&out.Attr)
	out.SetEntryTimeout(entryTimeout)
	out.SetAttrTimeout(contentTimeout)
	return d.NewInode(ctx, n, fs.StableAttr{Mode: syscall.S_IFREG, Ino: ino("image", name, info.Created.String())}), 0
}

// imageFile is a disk image as a regular file of its exact size. Reads
// decompress only the chunks they cover; a sequential reader gets the
// following chunks decoded ahead.
type imageFile struct {
	fs.Inode
	v    *view
	info catalog.ImageInfo

	mu  sync.Mutex
	img *pagestore.Image // resolved on first open; content is immutable
}

var (
	_ = (fs.NodeGetattrer)((*imageFile)(nil))
	_ = (fs.NodeOpener)((*imageFile)(nil))
	_ = (fs.NodeReader)((*imageFile)(nil))
)

func (f *imageFile) attr(out *fuse.Attr) {
	out.Mode = syscall.S_IFREG | 0o444
	out.Size = uint64(f.info.Size)
	out.Blocks = (out.Size + 511) / 512
	out.Blksize = uint32(f.info.ChunkSize)
	setTime(out, f.info.Created)
}

func (f *imageFile) Getattr(ctx context.Context, fh fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	f.attr(&out.Attr)
	out.SetTimeout(contentTimeout)
	return 0
}

func (f *imageFile) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	if flags&(syscall.O_WRONLY|syscall.O_RDWR|syscall.O_TRUNC|syscall.O_APPEND) != 0 {
		return nil, 0, syscall.EROFS
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.img == nil {
		img, err := f.v.s.OpenImage(f.info.Name)
		if err != nil {
			return nil, 0, errno(f.v, "images/"+f.info.Name, err)
		}
		if !img.Info.Created.Equal(f.info.Created) {
			return nil, 0, syscall.ESTALE // removed and imported again under this name
		}
		f.img = img
	}
	// Immutable content: keep the kernel's page cache across opens.
	return &imageHandle{img: f.img}, fuse.FOPEN_KEEP_CACHE, 0
}

// readAhead is how many chunks past a sequential read are decoded ahead.
const readAhead = 4

type imageHandle struct {
	img  *pagestore.Image
	mu   sync.Mutex
	next int64 // offset a sequential reader asks for next
}

func (f *imageFile) Read(ctx context.Context, fh fs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	h, ok := fh.(*imageHandle)
	if !ok {
		return nil, syscall.EBADF
	}
	h.mu.Lock()
	sequential := off == h.next
	h.next = off + int64(len(dest))
	h.mu.Unlock()
	if sequential {
		// Decode the chunks after this read on another goroutine while
		// this one is served: decompression is the cold path's cost.
		h.img.Prefetch(off+int64(len(dest)), int64(readAhead*f.info.ChunkSize))
	}
	n, err := h.img.ReadAt(dest, off)
	if err != nil && n == 0 && off >= h.img.Size() {
		return fuse.ReadResultData(nil), 0
	}
	if err != nil && n < len(dest) && off+int64(n) < h.img.Size() {
		return nil, errno(f.v, "images/"+f.info.Name, err)
	}
	return fuse.ReadResultData(dest[:n]), 0
}

// ---- snapshots/ ----

type snapshotsDir struct {
	topDir
}

var (
	_ = (fs.NodeLookuper)((*snapshotsDir)(nil))
	_ = (fs.NodeReaddirer)((*snapshotsDir)(nil))
)

func (d *snapshotsDir) Readdir(ctx context.Context) (fs.DirStream, syscall.Errno) {
	var entries []fuse.DirEntry
	err := d.v.s.Catalog().View(func(tx *catalog.Tx) error {
		snaps, err := tx.Snapshots()
		for _, s := range snaps {
			entries = append(entries, fuse.DirEntry{Name: s.Name, Mode: syscall.S_IFDIR, Ino: ino("snapshot", s.Name, s.Created.String())})
		}
		return err
	})
	if err != nil {
		return nil, errno(d.v, "snapshots", err)
	}
	return fs.NewListDirStream(entries), 0
}

func (d *snapshotsDir) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	var info catalog.SnapshotInfo
	err := d.v.s.Catalog().View(func(tx *catalog.Tx) (err error) {
		info, err = tx.SnapshotInfo(name)
		return err
	})
	if err != nil {
		return nil, errno(d.v, "snapshots/"+name, err)
	}
	dirAttr(&out.Attr)
	setTime(&out.Attr, info.Created)
	out.SetEntryTimeout(entryTimeout)
	out.SetAttrTimeout(entryTimeout)
	return d.NewInode(ctx, &snapshotDir{v: d.v, info: info}, fs.StableAttr{Mode: syscall.S_IFDIR, Ino: ino("snapshot", name, info.Created.String())}), 0
}

// snapshotDir holds one snapshot's files.
type snapshotDir struct {
	fs.Inode
	v    *view
	info catalog.SnapshotInfo
}

var (
	_ = (fs.NodeLookuper)((*snapshotDir)(nil))
	_ = (fs.NodeReaddirer)((*snapshotDir)(nil))
)

func (d *snapshotDir) id() string { return d.info.Name + "\x00" + d.info.Created.String() }

func (d *snapshotDir) Readdir(ctx context.Context) (fs.DirStream, syscall.Errno) {
	entries := []fuse.DirEntry{
		{Name: "info.json", Mode: syscall.S_IFREG, Ino: ino("info", d.id())},
		{Name: "memory", Mode: syscall.S_IFREG, Ino: ino("memory", d.id())},
		{Name: "working-set", Mode: syscall.S_IFREG, Ino: ino("ws", d.id())},
	}
	if d.info.Parent != "" {
		entries = append(entries, fuse.DirEntry{Name: "parent", Mode: syscall.S_IFLNK, Ino: ino("parent", d.id())})
	}
	return fs.NewListDirStream(entries), 0
}

func (d *snapshotDir) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	out.SetEntryTimeout(entryTimeout)
	out.SetAttrTimeout(entryTimeout)
	path := "snapshots/" + d.info.Name + "/" + name
	switch name {
	case "info.json":
		n := &genFile{v: d.v, path: path, created: d.info.Created, gen: func() ([]byte, error) {
			info, err := d.v.s.Inspect(d.info.Name)
			if err != nil {
				return nil, err
			}
			return json.MarshalIndent(info, "", "  ")
		}}
		return n.lookup(ctx, &d.Inode, out, ino("info", d.id()))
	case "working-set":
		n := &genFile{v: d.v, path: path, created: d.info.Created, gen: func() ([]byte, error) {
			var b strings.Builder
			err := d.v.s.Catalog().View(func(tx *catalog.Tx) error {
				s, err := tx.Snapshot(d.info.Name)
				if err != nil {
					return err
				}
				for _, p := range s.WorkingSet {
					b.WriteString(strconv.FormatUint(uint64(p), 10))
					b.WriteByte('\n')
				}
				return nil
			})
			return []byte(b.String()), err
		}}
		return n.lookup(ctx, &d.Inode, out, ino("ws", d.id()))
	case "memory":
		n := &memoryFile{v: d.v, info: d.info}
		n.attr(&out.Attr)
		out.SetAttrTimeout(contentTimeout)
		return d.NewInode(ctx, n, fs.StableAttr{Mode: syscall.S_IFREG, Ino: ino("memory", d.id())}), 0
	case "parent":
		if d.info.Parent == "" {
			return nil, syscall.ENOENT
		}
		n := &fs.MemSymlink{Data: []byte("../" + d.info.Parent)}
		out.Mode = syscall.S_IFLNK | 0o777
		return d.NewInode(ctx, n, fs.StableAttr{Mode: syscall.S_IFLNK, Ino: ino("parent", d.id())}), 0
	}
	return nil, syscall.ENOENT
}

// memoryFile is a snapshot's guest memory, parents resolved, as a file of
// the memory's size. Zero pages read as zeros and are holes to SEEK_HOLE.
type memoryFile struct {
	fs.Inode
	v    *view
	info catalog.SnapshotInfo
}

var (
	_ = (fs.NodeGetattrer)((*memoryFile)(nil))
	_ = (fs.NodeOpener)((*memoryFile)(nil))
	_ = (fs.NodeReader)((*memoryFile)(nil))
	_ = (fs.NodeLseeker)((*memoryFile)(nil))
)

func (f *memoryFile) attr(out *fuse.Attr) {
	out.Mode = syscall.S_IFREG | 0o444
	out.Size = uint64(f.info.MemSize)
	out.Blksize = catalog.PageSize
	setTime(out, f.info.Created)
}

func (f *memoryFile) Getattr(ctx context.Context, fh fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	f.attr(&out.Attr)
	if h, ok := fh.(*memoryHandle); ok {
		out.Blocks = uint64(h.m.Pages()-h.m.ZeroPages()) * 8
	}
	out.SetTimeout(contentTimeout)
	return 0
}

type memoryHandle struct{ m *pagestore.Memory }

func (f *memoryFile) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	if flags&(syscall.O_WRONLY|syscall.O_RDWR|syscall.O_TRUNC|syscall.O_APPEND) != 0 {
		return nil, 0, syscall.EROFS
	}
	m, err := f.v.s.OpenMemory(f.info.Name)
	if err != nil {
		return nil, 0, errno(f.v, "snapshots/"+f.info.Name+"/memory", err)
	}
	return &memoryHandle{m: m}, fuse.FOPEN_KEEP_CACHE, 0
}

func (f *memoryFile) Read(ctx context.Context, fh fs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	h, ok := fh.(*memoryHandle)
	if !ok {
		return nil, syscall.EBADF
	}
	if off >= h.m.Size() {
		return fuse.ReadResultData(nil), 0
	}
	n, err := h.m.ReadAt(dest[:min(int64(len(dest)), h.m.Size()-off)], off)
	if err != nil {
		return nil, errno(f.v, "snapshots/"+f.info.Name+"/memory", err)
	}
	return fuse.ReadResultData(dest[:n]), 0
}

// Lseek answers SEEK_DATA and SEEK_HOLE from the page map.
func (f *memoryFile) Lseek(ctx context.Context, fh fs.FileHandle, off uint64, whence uint32) (uint64, syscall.Errno) {
	h, ok := fh.(*memoryHandle)
	if !ok {
		return 0, syscall.EBADF
	}
	size := uint64(h.m.Size())
	if off >= size {
		return 0, syscall.ENXIO
	}
	const seekData, seekHole = 3, 4
	for p := int64(off / catalog.PageSize); p < h.m.Pages(); p++ {
		zero := h.m.IsZero(p)
		if whence == seekData && !zero || whence == seekHole && zero {
			return max(off, uint64(p)*catalog.PageSize), 0
		}
	}
	if whence == seekHole {
		return size, 0
	}
	return 0, syscall.ENXIO
}

// genFile is a small file generated from the catalog when opened.
type genFile struct {
	fs.Inode
	v       *view
	path    string
	created time.Time
	gen     func() ([]byte, error)
}

var (
	_ = (fs.NodeGetattrer)((*genFile)(nil))
	_ = (fs.NodeOpener)((*genFile)(nil))
	_ = (fs.NodeReader)((*genFile)(nil))
)

func (f *genFile) lookup(ctx context.Context, parent *fs.Inode, out *fuse.EntryOut, id uint64) (*fs.Inode, syscall.Errno) {
	data, err := f.gen()
	if err != nil {
		return nil, errno(f.v, f.path, err)
	}
	out.Mode = syscall.S_IFREG | 0o444
	out.Size = uint64(len(data))
	setTime(&out.Attr, f.created)
	return parent.NewInode(ctx, f, fs.StableAttr{Mode: syscall.S_IFREG, Ino: id}), 0
}

func (f *genFile) Getattr(ctx context.Context, fh fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	data, err := f.gen()
	if err != nil {
		return errno(f.v, f.path, err)
	}
	out.Mode = syscall.S_IFREG | 0o444
	out.Size = uint64(len(data))
	setTime(&out.Attr, f.created)
	out.SetTimeout(entryTimeout)
	return 0
}

type genHandle struct{ data []byte }

func (f *genFile) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	if flags&(syscall.O_WRONLY|syscall.O_RDWR|syscall.O_TRUNC|syscall.O_APPEND) != 0 {
		return nil, 0, syscall.EROFS
	}
	data, err := f.gen()
	if err != nil {
		return nil, 0, errno(f.v, f.path, err)
	}
	// The content is generated per open: no caching, no size trust.
	return &genHandle{data: data}, fuse.FOPEN_DIRECT_IO, 0
}

func (f *genFile) Read(ctx context.Context, fh fs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	h, ok := fh.(*genHandle)
	if !ok {
		return nil, syscall.EBADF
	}
	if off >= int64(len(h.data)) {
		return fuse.ReadResultData(nil), 0
	}
	return fuse.ReadResultData(h.data[off:min(int64(len(h.data)), off+int64(len(dest)))]), 0
}

// ---- functions/ ----

type functionsDir struct {
	topDir
}

var (
	_ = (fs.NodeLookuper)((*functionsDir)(nil))
	_ = (fs.NodeReaddirer)((*functionsDir)(nil))
)

func (d *functionsDir) Readdir(ctx context.Context) (fs.DirStream, syscall.Errno) {
	var entries []fuse.DirEntry
	err := d.v.s.Catalog().View(func(tx *catalog.Tx) error {
		fns, err := tx.Functions()
		for _, f := range fns {
			entries = append(entries, fuse.DirEntry{Name: f.Name, Mode: syscall.S_IFDIR, Ino: ino("function", f.Name, f.Created.String())})
		}
		return err
	})
	if err != nil {
		return nil, errno(d.v, "functions", err)
	}
	return fs.NewListDirStream(entries), 0
}

func (d *functionsDir) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	var fn *catalog.Function
	err := d.v.s.Catalog().View(func(tx *catalog.Tx) (err error) {
		fn, err = tx.Function(name)
		return err
	})
	if err != nil {
		return nil, errno(d.v, "functions/"+name, err)
	}
	dirAttr(&out.Attr)
	out.SetEntryTimeout(entryTimeout)
	out.SetAttrTimeout(entryTimeout)
	return d.NewInode(ctx, &functionDir{v: d.v, fn: *fn}, fs.StableAttr{Mode: syscall.S_IFDIR, Ino: ino("function", name, fn.Created.String())}), 0
}

// functionDir holds a function's config and links to what it runs from.
type functionDir struct {
	fs.Inode
	v  *view
	fn catalog.Function
}

var _ = (fs.NodeOnAdder)((*functionDir)(nil))

func (d *functionDir) OnAdd(ctx context.Context) {
	cfg, _ := json.MarshalIndent(d.fn, "", "  ")
	id := d.fn.Name + "\x00" + d.fn.Created.String()
	d.AddChild("config.json", d.NewPersistentInode(ctx, &fs.MemRegularFile{Data: append(cfg, '\n'), Attr: fuse.Attr{Mode: 0o444}},
		fs.StableAttr{Ino: ino("fn-config", id)}), false)
	for _, l := range []struct{ name, target string }{
		{"runtime", "images/" + d.fn.Runtime},
		{"app", "images/" + d.fn.App},
		{"base-snapshot", "snapshots/" + d.fn.BaseSnapshot},
		{"snapshot", "snapshots/" + d.fn.Snapshot},
	} {
		if strings.HasSuffix(l.target, "/") {
			continue
		}
		d.AddChild(l.name, d.NewPersistentInode(ctx, &fs.MemSymlink{Data: []byte("../../" + l.target)},
			fs.StableAttr{Mode: syscall.S_IFLNK, Ino: ino("fn-link", id, l.name)}), false)
	}
}
