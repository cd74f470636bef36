package buffer

import (
	"path/filepath"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Remove next to a batch whose header cannot be read skips that batch's
// range and goes on (found in review: it looped for ever inside the write
// transaction).
func TestRemoveSkipsBatchWithBrokenHeader(t *testing.T) {
	for _, tc := range []struct {
		name   string
		damage func(v []byte) []byte
	}{
		{"magic", func(v []byte) []byte { v[0] = 0; return v }},
		{"short", func(v []byte) []byte { return v[:5] }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			db, err := bolt.Open(filepath.Join(t.TempDir(), "x.db"), 0o600, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			done := make(chan error, 1)
			go func() {
				done <- db.Update(func(tx *bolt.Tx) error {
					bk, _ := tx.CreateBucket(bucketBatches)
					recs := [][]byte{[]byte("aaaa"), []byte("bbbb"), []byte("cccc"), []byte("dddd"), []byte("eeee")}
					bk.Put(seqKey(1), tc.damage(appendBatch(nil, 1, recs)))
					bk.Put(seqKey(6), appendBatch(nil, 6, recs))
					st := &state{head: 1, next: 11, count: 10, bytes: 40}
					if err := removeTx(tx, st, []uint64{3, 7}); err != nil {
						return err
					}
					if st.count != 9 || st.bytes != 36 {
						t.Errorf("after removing seq 7 (3 is in the broken batch): count %d, bytes %d; want 9, 36", st.count, st.bytes)
					}
					return nil
				})
			}()
			select {
			case err := <-done:
				if err != nil {
					t.Fatal(err)
				}
			case <-time.After(3 * time.Second):
				t.Fatal("removeTx still running after 3s: infinite loop (the committer would hold the write transaction for ever)")
			}
		})
	}
}
