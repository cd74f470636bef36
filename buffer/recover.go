package buffer

import (
	"cmp"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// ErrCorruptFile is returned (wrapped) by Open for a file that exists but
// is not a usable buffer: not a bbolt database, damaged pages or meta, or
// counters that contradict the records.
var ErrCorruptFile = errors.New("buffer file is corrupt")

// OpenOrMoveAside opens path like Open. If the file is corrupt
// (ErrCorruptFile), it renames it to path.corrupt-<UTC time>, where it stays
// for inspection (see MoveAside), salvages what is readable of it into a
// new buffer at path (see ReadOnly.Salvage: the intact records keep their
// sequence numbers and are forwarded as if nothing happened), and opens
// that. It returns the name the damaged file was moved to, or "" if it
// opened the file as it was. Any other error (a lock, a permission) is
// returned as it is: moving the file would not help.
func OpenOrMoveAside(path string, opts Options) (*Buffer, string, error) {
	b, err := Open(path, opts)
	if err == nil {
		b.pruneAside()
		return b, "", nil
	}
	if !errors.Is(err, ErrCorruptFile) {
		return nil, "", err
	}
	opts.setDefaults()
	opts.Logger.Error("buffer: the buffer file is damaged; moving it aside and salvaging what is readable", "path", path, "err", err)
	aside, rerr := MoveAside(path, opts.Logger)
	if rerr != nil && aside != "" {
		return nil, aside, fmt.Errorf("%w; moved it to %s, but %w", err, aside, rerr)
	}
	if rerr != nil {
		return nil, "", fmt.Errorf("%w; moving it aside failed: %w", err, rerr)
	}
	b, err2 := Open(path, opts)
	if err2 != nil {
		return nil, aside, fmt.Errorf("%w; moved it to %s but a new buffer failed too: %w", err, aside, err2)
	}
	return b, aside, nil
}

// MoveAside salvages what is readable of the damaged buffer file at path
// into a new buffer file (see ReadOnly.Salvage), renames the damaged file
// to path.corrupt-<UTC time> (with -2, -3... if that exists), where it
// stays for inspection, and puts the new file at path. It returns the name
// the damaged file was moved to. A salvage that fails is logged, not
// returned: the file is moved aside all the same, and a new buffer can
// start. The file must not be open.
//
// A salvage that copied everything the damaged file held (see salvaged's
// complete) adds .salvaged-<lineage>-<next> to the name: once a buffer
// that descends from the new one by complete copies only has released
// every record below next, a later OpenOrMoveAside removes the file,
// unless it is the latest such file (see pruneAside). The others stay
// until an operator removes them: they may hold what no salvage could
// read.
//
// A crash at any point loses nothing: the salvage is written to
// path.salvage.tmp and renamed to path.salvage once complete, before the
// damaged file moves; Open adopts a complete path.salvage when path is
// missing, and a crash before the renames finds the damaged file at path
// again.
func MoveAside(path string, log *slog.Logger) (string, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	tmp, done := path+".salvage.tmp", path+".salvage"
	os.Remove(tmp)
	old := readCounters(path)
	counted := old != nil // else what salvage misses cannot be counted
	// A complete salvage continues the damaged file's lineage unless the
	// file is an older copy put back (see forked), judged by its own next
	// before the salvage raises it to its reservation.
	continues := old != nil
	if continues && forked(path, old.lineage, old.next) {
		continues = false
		log.Warn("buffer: the damaged file is older than a file moved aside from its lineage (a copy put back?); the moved-aside files are kept", "path", path, "next_seq", old.next)
	}
	res, err := salvageFile(path, tmp, continues)
	n := res.copied
	if err == nil {
		err = os.Rename(tmp, done)
	}
	if err == nil {
		err = syncDir(path)
	}
	if err != nil {
		os.Remove(tmp)
		os.Remove(done)
		log.Error("buffer: salvaging the damaged file failed; starting an empty buffer", "path", path, "err", err)
	}
	stamp := time.Now().UTC().Format("20060102T150405Z")
	name := path + ".corrupt-" + stamp
	for i := 2; len(asideFiles(name)) > 0; i++ { // moved aside twice in a second
		name = fmt.Sprintf("%s.corrupt-%s-%d", path, stamp, i)
	}
	aside := name
	if err == nil && res.complete && lineageName.MatchString(res.lineage) {
		// The new buffer holds a copy of everything in it: once a
		// buffer of the same lineage has released every record below
		// next, a later start removes it (see pruneAside).
		aside = fmt.Sprintf("%s.salvaged-%s-%d", name, res.lineage, res.next)
	}
	if err := os.Rename(path, aside); err != nil {
		return "", err
	}
	os.Remove(DamageMark(path)) // the mark goes with the file
	syncDir(path)
	if err != nil {
		return aside, nil
	}
	if err := renameFile(done, path); err != nil {
		return aside, fmt.Errorf("put the salvaged buffer %s in place (the next start tries again): %w", done, err)
	}
	syncDir(path)
	log.Warn("buffer: salvaged the readable records of the damaged file; they are forwarded as usual", "damaged", aside, "records", n)
	if !counted {
		log.Error("buffer: the damaged file's counters are unreadable: how many records it held beyond those salvaged is not known, and they are not counted as dropped", "damaged", aside)
	}
	return aside, nil
}

// renameFile is os.Rename; a test makes it fail (root renames past any
// permission).
var renameFile = os.Rename

// adoptSalvage puts a complete salvage (see MoveAside) at path if a crash
// left it there with no file at path. If the rename fails, it returns the
// error: a new, empty buffer at path would take the salvage's place (and
// removeLeftovers would delete it), so Open must not go on.
func adoptSalvage(path string, log *slog.Logger) error {
	done := path + ".salvage"
	if _, err := os.Stat(done); err != nil {
		return nil
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		return nil // the damaged file is still there: MoveAside starts over
	}
	if err := renameFile(done, path); err != nil {
		return fmt.Errorf("put the salvaged buffer %s in place (it holds the records salvaged from a damaged buffer; nothing starts without it): %w", done, err)
	}
	syncDir(path)
	os.Remove(DamageMark(path)) // the marked file was moved aside
	log.Warn("buffer: finished a salvage a crash interrupted", "path", path)
	return nil
}

// CorruptFiles lists the damaged buffer files OpenOrMoveAside moved aside
// next to path, oldest first.
func CorruptFiles(path string) []string {
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	ents, _ := os.ReadDir(dir)
	type aside struct {
		path, at string
		n        int // the -N of a second move aside in the same second; 1 without
	}
	var m []aside
	for _, e := range ents {
		rest, ok := strings.CutPrefix(e.Name(), base+".")
		if !ok {
			continue
		}
		if sm := asideName.FindStringSubmatch(rest); sm != nil {
			a := aside{path: path + "." + rest, at: sm[1], n: 1}
			if sm[2] != "" {
				n, err := strconv.Atoi(sm[2])
				if err != nil {
					n = math.MaxInt // more digits than an int holds: last
				}
				a.n = n
			}
			m = append(m, a)
		}
	}
	slices.SortFunc(m, func(a, b aside) int { // numbers as numbers: -10 after -9
		return cmp.Or(strings.Compare(a.at, b.at), cmp.Compare(a.n, b.n))
	})
	var paths []string
	for _, a := range m {
		paths = append(paths, a.path)
	}
	return paths
}

// asideName matches what MoveAside appends to a damaged file's name, and
// not, say, an operator's buffer.db.corrupt-<time>.rescued copy. The
// groups are the time, the -N suffix's number and, for a file whose
// salvage was complete, its lineage (see state.lineage) and the next
// sequence number after its records.
var asideName = regexp.MustCompile(`^corrupt-([0-9]{8}T[0-9]{6}Z)(?:-([0-9]+))?(?:\.salvaged-([0-9a-f]{1,64})-([0-9]+))?$`)

// lineageName matches a lineage that can go into a file name (see newID).
var lineageName = regexp.MustCompile(`^[0-9a-f]{1,64}$`)

// asideFiles lists the files at name (a moved-aside file's name without
// its .salvaged-<lineage>-<next> suffix), with or without the suffix.
func asideFiles(name string) []string {
	dir, base := filepath.Split(name)
	if dir == "" {
		dir = "."
	}
	ents, _ := os.ReadDir(dir)
	var out []string
	for _, e := range ents {
		if n := e.Name(); n == base || strings.HasPrefix(n, base+".salvaged-") {
			out = append(out, filepath.Join(dir, n))
		}
	}
	return out
}

// forked reports whether a buffer of lineage whose counters say next is
// not a descendant of every moved-aside file of its lineage: one of them
// has a higher next (a descendant starts at the file's next and only goes
// up), so the buffer is an older copy put back (a backup), and that file
// may hold records it lacks. Open then starts another lineage, and
// MoveAside's salvage of such a file does not continue its lineage.
func forked(path, lineage string, next uint64) bool {
	for _, f := range CorruptFiles(path) {
		if l, n, ok := salvagedName(path, f); ok && l == lineage && n > next {
			return true
		}
	}
	return false
}

// salvagedName parses the .salvaged-<lineage>-<next> of a file moved aside
// next to path; ok is false for any other name.
func salvagedName(path, f string) (lineage string, next uint64, ok bool) {
	sm := asideName.FindStringSubmatch(strings.TrimPrefix(filepath.Base(f), filepath.Base(path)+"."))
	if sm == nil || sm[3] == "" {
		return "", 0, false
	}
	next, err := strconv.ParseUint(sm[4], 10, 64)
	return sm[3], next, err == nil
}

// pruneAside prunes the damaged files moved aside next to b's file (see
// the function pruneAside). OpenOrMoveAside calls it when it opened the
// file as it was.
func (b *Buffer) pruneAside() {
	b.mu.Lock()
	lineage, head := b.st.lineage, b.st.head
	b.mu.Unlock()
	if pruneAside(b.path, lineage, head, b.log) > 0 {
		n := len(CorruptFiles(b.path))
		b.mu.Lock()
		b.corrupt = n
		b.mu.Unlock()
	}
}

// pruneAside removes the damaged files moved aside next to path whose
// salvage was complete (MoveAside named them .salvaged-<lineage>-<next>)
// and whose lineage the buffer still has, once it has released every
// record they held (head is at or past next): what they held went to
// Kafka, was dead-lettered (the salvage copied their dead letters too),
// or was dropped by a limit or purged, and counted. The lineage is what makes that
// true: the buffer holds it only if every file between the damaged one
// and itself was a complete copy of the one before (a complete salvage,
// a compaction). A salvage that may have left records behind (page by
// page, failed, anything left behind), one made by hand (ferry buffer
// verify --salvage), an older copy put back (see forked) and a buffer
// started anew begin another lineage, and the files of an earlier one
// stay until an operator removes them. Of the buffer's lineage, the file
// with the highest next, the latest (sequence numbers only grow, whatever
// the clock says), always stays, for inspection.
func pruneAside(path, lineage string, head uint64, log *slog.Logger) (removed int) {
	type done struct {
		path string
		next uint64
	}
	var complete []done
	for _, f := range CorruptFiles(path) {
		if l, next, ok := salvagedName(path, f); ok && l == lineage {
			complete = append(complete, done{f, next})
		}
	}
	if len(complete) < 2 {
		return 0
	}
	latest := complete[0]
	for _, d := range complete[1:] {
		if d.next >= latest.next { // a tie: the later name
			latest = d
		}
	}
	for _, d := range complete {
		if d == latest || d.next > head {
			continue
		}
		fi, err := os.Stat(d.path)
		if err != nil {
			continue
		}
		if err := os.Remove(d.path); err != nil {
			log.Warn("buffer: cannot remove a damaged file whose records were salvaged and released", "path", d.path, "err", err)
			continue
		}
		log.Info("buffer: removed a damaged file whose records were all salvaged and released", "path", d.path, "bytes", fi.Size(), "below_seq", d.next)
		removed++
	}
	return removed
}

// openBolt opens the bbolt file, turning bbolt's corruption errors and
// panics into ErrCorruptFile, and returns the file it opened (bbolt owns
// it; checkPath compares it with the path). If the file at path was replaced while Open
// waited for its lock (ferry buffer compact renames a new file over it), it
// opens the new one: a buffer never writes to a file no longer at path.
func openBolt(path string, o *bolt.Options) (*bolt.DB, *os.File, error) {
	for attempt := 0; ; attempt++ {
		var opened *os.File
		oo := *o
		oo.OpenFile = func(name string, flag int, mode os.FileMode) (*os.File, error) {
			f, err := os.OpenFile(name, flag, mode)
			opened = f
			return f, err
		}
		db, err := openBoltOnce(path, &oo)
		if err != nil || opened == nil || attempt == 3 {
			return db, opened, err
		}
		held, err1 := opened.Stat()
		now, err2 := os.Stat(path)
		if err1 != nil || err2 != nil || os.SameFile(held, now) {
			return db, opened, nil
		}
		db.Close() // replaced while we waited: open what is there now
	}
}

func openBoltOnce(path string, o *bolt.Options) (db *bolt.DB, err error) {
	// A panic inside bolt.Open leaves its file open and locked: close it,
	// or the damaged file could not be salvaged in this process.
	var opened *os.File
	oo := *o
	open := oo.OpenFile
	if open == nil {
		open = os.OpenFile
	}
	oo.OpenFile = func(name string, flag int, mode os.FileMode) (*os.File, error) {
		f, err := open(name, flag, mode)
		opened = f
		return f, err
	}
	err = guard(func() error {
		db, err = openBoltUnguarded(path, &oo)
		return err
	})
	if err != nil && db == nil && opened != nil {
		opened.Close()
	}
	return db, err
}

func openBoltUnguarded(path string, o *bolt.Options) (db *bolt.DB, err error) {
	if err := checkMetaPages(path, false); err != nil {
		return nil, err
	}
	if fi, serr := os.Stat(path); serr == nil && fi.Size() > 0 && fi.Size() < 4*1024 {
		return nil, fmt.Errorf("%w: %d bytes is smaller than a database's first pages", ErrCorruptFile, fi.Size())
	}
	db, err = bolt.Open(path, 0o600, o)
	switch {
	case err == nil:
		return db, nil
	case errors.Is(err, berrors.ErrInvalid), errors.Is(err, berrors.ErrVersionMismatch), errors.Is(err, berrors.ErrChecksum),
		errors.Is(err, berrors.ErrInvalidMapping):
		return nil, fmt.Errorf("%w: %w", ErrCorruptFile, err)
	}
	return nil, err
}

// removeLeftovers deletes the temporary files a killed compaction, copy
// or salvage left next to path (up to the size of the buffer each). It
// runs once Open holds the file's lock, when none of them can be in use.
func removeLeftovers(path string, log *slog.Logger) {
	for _, suffix := range []string{".compact", ".recreate", ".salvage.tmp", ".salvage"} {
		p := path + suffix
		fi, err := os.Stat(p)
		if err != nil {
			continue
		}
		if err := os.Remove(p); err != nil {
			log.Warn("buffer: cannot remove a leftover of an interrupted operation", "path", p, "err", err)
			continue
		}
		log.Info("buffer: removed a leftover of an interrupted operation", "path", p, "bytes", fi.Size())
	}
}
