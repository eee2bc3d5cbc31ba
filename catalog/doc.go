// Package catalog is the metadata database of a snapfaas store: which
// chunks exist and where their bytes live, and the named objects built from
// them (disk images, memory snapshots, functions) plus the leases that keep
// in-flight work alive across garbage collection.
//
// The catalog knows nothing about compression or chunk files; it records
// locations that package pagestore hands it and gives them back. It is a
// single bbolt file, catalog.db, with this schema (version 1):
//
//	meta/
//	  version        -> uint32 big endian: the schema version
//	  created        -> RFC 3339 time the store was created
//	chunks/
//	  <sha256 32B>   -> Loc: pack u32 | offset u64 | clen u32 | ulen u32 | codec u8 (big endian)
//	packs/
//	  <id u32 BE>    -> committed length u64: bytes of the pack file that the
//	                    catalog vouches for; anything beyond is crash debris
//	images/
//	  <name>/
//	    info         -> JSON ImageInfo (size, chunk size, created, labels)
//	    chunks       -> n × 32 B hashes, one per chunk in order; all-zero hash = zero chunk
//	snapshots/
//	  <name>/
//	    info         -> JSON SnapshotInfo (kind, parent, memory size, granularity, ...)
//	    chunks       -> n × 32 B: the layer's chunk table
//	    extents      -> varint-encoded []Extent: page ranges of this layer
//	    vmconfig     -> opaque blob (VM configuration, JSON by convention)
//	    vmstate      -> opaque blob (vCPU and device state)
//	    workingset   -> n × uint32 BE page indices in first-touch order
//	functions/
//	  <name>         -> JSON Function
//	leases/
//	  <id>/
//	    info         -> JSON LeaseInfo (owner, pid, created, expires)
//	    objects/     -> "image/<name>" or "snapshot/<name>" -> empty
//	    chunks/      -> <sha256 32B> -> empty
//
// Invariants the catalog keeps:
//   - Image and snapshot names share one namespace: a name is one or the
//     other, never both (ErrExists).
//   - A snapshot's parent exists for as long as the snapshot does: removing a
//     snapshot with children, or an object named by a function or held by a
//     live lease, fails with ErrInUse.
//   - There are no reference counts. Chunks are kept alive by reachability:
//     garbage collection marks from the roots (every image and snapshot,
//     every live lease) and sweeps the rest, like containerd's metadata GC.
//     Nothing has to be kept consistent on each write, so a crash between
//     writes cannot leave a count wrong.
//   - A chunk entry is only committed after its bytes are durable in the pack
//     file (package pagestore fsyncs first), so every entry in chunks/ points
//     at data that survived.
//
// Opening a catalog written by an older schema migrates it in one
// transaction (writable opens only); a newer schema is refused with
// ErrSchema rather than misread.
package catalog
