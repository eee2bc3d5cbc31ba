// Package pagestore is the content store behind snapfaas snapshots: disk
// images and guest memory cut into chunks, compressed, deduplicated by
// content, and read back lazily with verification.
//
// # Layout
//
// A store is a directory:
//
//	STORE/
//	  LOCK           flock: exclusive for the one writer, shared for readers;
//	                 the writer's pid and command are written inside
//	  catalog.db     bbolt metadata (package catalog)
//	  chunks/
//	    pack-00000001.sfp   append-only chunk records (format in pack.go)
//
// A chunk is the data of one or more consecutive guest pages (memory) or
// one fixed-size block (images), addressed by the SHA-256 of its
// uncompressed bytes, so the same content anywhere in the store is kept
// once. Zero chunks and zero pages are recorded in the object, never stored.
//
// # Memory snapshots
//
// Guest memory is cut into runs of Granularity bytes; in each run every
// maximal range of non-zero pages becomes one chunk. A diff snapshot records
// only the pages that differ from its parent (compared byte for byte), plus
// explicit zero ranges for pages that became zero; everything else resolves
// through the parent chain. OpenMemory flattens the chain into one page →
// (chunk, page) table.
//
// # Writing and crashes
//
// One write operation runs at a time. An import takes a lease, hashes and
// compresses candidates on all cores, appends new records to the active
// pack, and commits in this order: flush and fsync the pack, then one
// catalog transaction that records the chunks, the pack's new committed
// length and — at the end — the object, dropping the lease. A crash at any
// point leaves either uncommitted bytes past a pack's committed length or a
// pack file the catalog never knew; both are invisible to readers, reported
// by Verify and reclaimed by GC. Large imports commit every 64 MiB under
// their lease so GC cannot take their chunks before the object lands.
// Every step that writes a file or commits the catalog, in imports and
// GC, is a named crash point (crashpoint.go); crash_test.go kills a child
// process at each, with and without dropping what was not fsynced.
//
// # Reading
//
// Readers take no locks beyond a map lookup: records are read with pread,
// checked (record CRC-32C over header and payload, hash and lengths against
// the catalog), decompressed with a shared zstd decoder (DecodeAll is safe
// for concurrent use) and kept in a bounded LRU of decompressed chunks.
// Concurrent misses on one chunk decode it once. A record that fails any
// check yields ErrCorrupt, never bytes. The SHA-256 of the decoded bytes is
// checked by Verify always and by reads when VerifyHash is set: it costs
// about as much as the decode itself for a 4 KiB page, which the fault path
// cannot afford, while the CRC already covers every stored byte.
//
// # Garbage collection
//
// GC marks every chunk reachable from an image, a snapshot layer or a live
// lease (not expired, holder process alive), deletes the rest from the
// catalog, and reclaims space: packs with no live chunk are deleted, packs
// with enough dead bytes are rewritten, crash debris is truncated. The
// catalog is always updated before a file is removed.
package pagestore
