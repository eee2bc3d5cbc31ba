package pagestore

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"time"

	"github.com/snapfaas/snapfaas/catalog"
)

// Lease takes a lease that keeps objects and chunks from being removed or
// collected until it is released, it expires (ttl > 0), or this process
// exits. A running VM leases its snapshot; tools lease what they are about
// to reference.
func (s *Store) Lease(owner string, ttl time.Duration, objects []catalog.ObjectRef, chunks []catalog.Hash) (string, error) {
	if s.readOnly {
		return "", ErrReadOnly
	}
	var b [8]byte
	_, _ = rand.Read(b[:])
	now := time.Now().UTC()
	info := catalog.LeaseInfo{ID: "lease-" + hex.EncodeToString(b[:]), Owner: owner, PID: os.Getpid(), Created: now}
	if ttl > 0 {
		info.Expires = now.Add(ttl)
	}
	err := s.cat.Update(func(tx *catalog.Tx) error {
		if err := tx.PutLease(info); err != nil {
			return err
		}
		for _, r := range objects {
			if err := tx.LeaseObject(info.ID, r); err != nil {
				return err
			}
		}
		for _, h := range chunks {
			if !tx.HasChunk(h) {
				return fmt.Errorf("chunk %s: %w", h.Short(), catalog.ErrNotFound)
			}
		}
		return tx.LeaseChunks(info.ID, chunks)
	})
	if err != nil {
		return "", fmt.Errorf("lease for %s: %w", owner, err)
	}
	return info.ID, nil
}

// ReleaseLease drops a lease.
func (s *Store) ReleaseLease(id string) error {
	if s.readOnly {
		return ErrReadOnly
	}
	return s.cat.Update(func(tx *catalog.Tx) error { return tx.DeleteLease(id) })
}

// SetWorkingSet stores pages (snapshot page indices in first-touch order)
// as snapshot name's working set, replacing the one it had.
func (s *Store) SetWorkingSet(name string, pages []uint32) error {
	if s.readOnly {
		return ErrReadOnly
	}
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	if err := s.cat.Update(func(tx *catalog.Tx) error { return tx.SetWorkingSet(name, pages) }); err != nil {
		return fmt.Errorf("working set of %q: %w", name, err)
	}
	return nil
}
