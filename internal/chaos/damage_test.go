//go:build chaos

package chaos

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// mountTmpfs mounts a tmpfs of size (mount's size=, e.g. "8m") for the
// test and unmounts it at the end, after everything registered later
// (ferry's supervisor) has stopped. Where it cannot mount (not root) it
// skips, or fails when FERRY_REQUIRE_ROOT_CHAOS=1.
func mountTmpfs(t *testing.T, size string) string {
	t.Helper()
	mnt := filepath.Join(t.TempDir(), "tmpfs")
	if err := os.Mkdir(mnt, 0o700); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size+",mode=0700", "tmpfs", mnt).CombinedOutput()
	if err != nil {
		msg := fmt.Sprintf("cannot mount a %s tmpfs for the full disk (root needed; uid %d): %v: %s", size, os.Geteuid(), err, out)
		if os.Getenv(envRequireRoot) == "1" {
			t.Fatalf("%s=1 but %s", envRequireRoot, msg)
		}
		t.Skip(msg)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", mnt, err, out)
		}
	})
	return mnt
}

// usedFraction is how full the file system at dir is, 0 to 1.
func usedFraction(dir string) float64 {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil || st.Blocks == 0 {
		return 0
	}
	return 1 - float64(st.Bfree)/float64(st.Blocks)
}

// boltMagic marks a bbolt meta page.
const boltMagic = 0xED0CDAED

// boltHighWater reads the bbolt file's page size and high-water mark (the
// number of pages in use, free ones included) from its newer valid meta
// page. Layout: a 16-byte page header, then magic, version, page size,
// flags (uint32 each), the root bucket (16 bytes), the freelist page, the
// high-water mark and the transaction id (uint64 each), little-endian.
func boltHighWater(path string) (pageSize, pages int64, err error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	type meta struct {
		pageSize, pages int64
		txid            uint64
	}
	read := func(off int64) (meta, bool) {
		b := make([]byte, 80)
		if _, err := f.ReadAt(b, off); err != nil {
			return meta{}, false
		}
		m := b[16:]
		if binary.LittleEndian.Uint32(m[0:]) != boltMagic {
			return meta{}, false
		}
		return meta{int64(binary.LittleEndian.Uint32(m[8:])), int64(binary.LittleEndian.Uint64(m[40:])), binary.LittleEndian.Uint64(m[48:])}, true
	}
	m0, ok0 := read(0)
	second := int64(4096)
	if ok0 {
		second = m0.pageSize
	}
	m1, ok1 := read(second)
	switch {
	case ok0 && (!ok1 || m0.txid >= m1.txid):
		return m0.pageSize, m0.pages, nil
	case ok1:
		return m1.pageSize, m1.pages, nil
	}
	return 0, 0, errors.New("no valid bbolt meta page")
}

// truncateHalf cuts the file to half of the pages it uses, as a write
// that never reached the card (or a copy cut short) leaves it.
func truncateHalf(path string, _ *rand.Rand) (string, error) {
	pageSize, pages, err := boltHighWater(path)
	if err != nil {
		return "", err
	}
	fi, err := os.Stat(path)
	if err != nil {
		return "", err
	}
	cut := pages / 2 * pageSize
	if err := os.Truncate(path, cut); err != nil {
		return "", err
	}
	return fmt.Sprintf("truncated from %d bytes (%d pages of %d in use) to %d", fi.Size(), pages, pageSize, cut), nil
}

// flipBits flips one bit in each of 4 random bytes of 16 consecutive
// pages, starting at a random page in the second quarter of the pages in
// use: a stretch of flash gone bad.
func flipBits(path string, rng *rand.Rand) (string, error) {
	pageSize, pages, err := boltHighWater(path)
	if err != nil {
		return "", err
	}
	const run, perPage = 16, 4
	if pages < 4*run {
		return "", fmt.Errorf("only %d pages in use, too few to damage", pages)
	}
	first := pages/4 + rng.Int64N(pages/4)
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return "", err
	}
	defer f.Close()
	b := make([]byte, 1)
	for pg := first; pg < first+run; pg++ {
		for range perPage {
			off := pg*pageSize + rng.Int64N(pageSize)
			if _, err := f.ReadAt(b, off); err != nil {
				return "", err
			}
			b[0] ^= 1 << rng.IntN(8)
			if _, err := f.WriteAt(b, off); err != nil {
				return "", err
			}
		}
	}
	if err := f.Sync(); err != nil {
		return "", err
	}
	return fmt.Sprintf("%d bits flipped in pages %d-%d of %d (page size %d)", run*perPage, first, first+run-1, pages, pageSize), f.Close()
}
