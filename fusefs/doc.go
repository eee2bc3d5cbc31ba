// Package fusefs exposes a store read-only over FUSE, so that VMs attach
// disk images as plain files that stay compressed and deduplicated in the
// store, and people browse snapshots with ls and cat:
//
//	MOUNT/
//	  images/<name>                 each image, a regular file of its exact size
//	  snapshots/<name>/info.json    what `snapstore inspect --json` prints
//	  snapshots/<name>/memory       guest memory, parents resolved; zero pages are holes
//	  snapshots/<name>/working-set  page indices in first-touch order, one per line
//	  snapshots/<name>/parent       symlink to ../<parent> for a diff snapshot
//	  functions/<name>/config.json  the function's configuration
//	  functions/<name>/{runtime,app,base-snapshot,snapshot}  symlinks to what it uses
//
// Directories are read from the catalog on every lookup (entries live one
// second), so imports and removals show without a remount. Content is
// immutable: an object keeps its inode for life and a name imported again
// is a new inode, so content files open with FOPEN_KEEP_CACHE and long
// attribute timeouts, and the kernel's page cache serves repeated reads.
// Reads decompress only the chunks they cover, through the store's shared
// chunk cache. A chunk that fails verification fails the read with EIO and
// a log line naming the chunk; wrong bytes are never returned. The mount
// is "ro": writes, creates and renames fail with EROFS.
//
// Mounting uses go-fuse's DirectMount (mount(2) as root); no fusermount is
// needed or used.
package fusefs
