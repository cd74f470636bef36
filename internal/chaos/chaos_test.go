//go:build chaos

package chaos

import (
	"flag"
	"fmt"
	"hash/fnv"
	"maps"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"text/tabwriter"
	"time"

	"go.uber.org/goleak"

	"github.com/ferry-edge/ferry/internal/testenv"
)

// Environment variables and flags of the suite.
const (
	// EnvMode set to "long" runs the full durations (as -chaos.long does).
	envMode = "FERRY_CHAOS"
	// envSeed fixes the random choices (kill moments, damaged bytes) to
	// rerun a failure; the suite logs the seed it used.
	envSeed = "FERRY_CHAOS_SEED"
	// envRequireRoot set to "1" makes a scenario that needs root (a tmpfs
	// for the full disk) fail instead of skip where it cannot mount.
	envRequireRoot = "FERRY_REQUIRE_ROOT_CHAOS"
	// envBinary runs that ferry binary instead of building ./cmd/ferry;
	// envExec prefixes its command line (qemu-aarch64-static, say), as
	// in cmd/ferry's tests.
	envBinary = "FERRY_TEST_BINARY"
	envExec   = "FERRY_TEST_EXEC"
	// envLogs names a directory where each scenario's ferry and Mosquitto
	// logs are kept (the test's own directories are removed).
	envLogs = "FERRY_CHAOS_LOGS"
)

var longFlag = flag.Bool("chaos.long", false, "run the long chaos suite: the full durations (as "+envMode+"=long)")

// ferryArgv is the command that runs ferry, subcommand not included.
var ferryArgv []string

// TestMain builds the ferry binary once for the whole suite (unless
// FERRY_TEST_BINARY names one).
func TestMain(m *testing.M) {
	flag.Parse()
	os.Exit(buildAndRun(m))
}

func buildAndRun(m *testing.M) int {
	bin := os.Getenv(envBinary)
	if bin == "" {
		dir, err := os.MkdirTemp("", "ferry-chaos-bin")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(dir)
		bin = filepath.Join(dir, "ferry")
		cmd := exec.Command("go", "build", "-trimpath", "-o", bin, "github.com/ferry-edge/ferry/cmd/ferry")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "build ferry: %v\n%s", err, out)
			return 1
		}
	}
	ferryArgv = []string{bin}
	if emu := os.Getenv(envExec); emu != "" {
		ferryArgv = []string{emu, bin}
	}
	code := m.Run()
	if code == 0 {
		// Every goroutine a scenario started (sensors, collectors,
		// supervisors, Kafka) has ended with it.
		if err := goleak.Find(); err != nil {
			fmt.Fprintf(os.Stderr, "goroutines left behind: %v\n", err)
			return 1
		}
	}
	return code
}

// params are the suite's durations and counts, short (CI) or long.
type params struct {
	long           bool
	seed           uint64
	unit           unit          // packaging/ferry.service
	restartDelay   time.Duration // the supervisor's RestartSec: the unit's, shorter in the short suite
	kills          int           // SIGKILLs in the kill scenario
	killWithin     time.Duration // a kill lands at a random moment up to this long after the process started
	outages        [2]time.Duration
	brokerRestarts int           // Mosquitto restarts
	diskHold       time.Duration // how long the disk stays full with messages arriving
	settle         time.Duration // longest wait for delivery at the end of a scenario
}

func suiteParams(t *testing.T) params {
	t.Helper()
	u, err := readUnit(unitPath)
	if err != nil {
		t.Fatal(err)
	}
	p := params{
		long: *longFlag || os.Getenv(envMode) == "long", unit: u,
		restartDelay: min(u.RestartDelay, 500*time.Millisecond),
		kills:        20, killWithin: 1500 * time.Millisecond,
		outages:        [2]time.Duration{10 * time.Second, 30 * time.Second},
		brokerRestarts: 3, diskHold: 10 * time.Second, settle: 90 * time.Second,
		seed: uint64(time.Now().UnixNano()),
	}
	if p.long {
		p.restartDelay = u.RestartDelay
		p.kills, p.killWithin = 50, 3*time.Second
		p.outages = [2]time.Duration{30 * time.Second, 5 * time.Minute}
		p.brokerRestarts, p.diskHold, p.settle = 10, time.Minute, 5*time.Minute
	}
	if s := os.Getenv(envSeed); s != "" {
		if p.seed, err = strconv.ParseUint(s, 10, 64); err != nil {
			t.Fatalf("%s=%q: %v", envSeed, s, err)
		}
	}
	return p
}

// rng returns the random source of one scenario: the same seed gives it
// the same choices whatever ran before.
func (p params) rng(scenario string) *rand.Rand {
	h := fnv.New64a()
	h.Write([]byte(scenario))
	return rand.New(rand.NewPCG(p.seed, h.Sum64()))
}

// scenarios are the suite, in the order it runs them.
var scenarios = []struct {
	name string
	run  func(t *testing.T, p params, r *row)
}{
	{"sigkill", scenarioKill},
	{"kafka-down-30s", func(t *testing.T, p params, r *row) { scenarioKafkaDown(t, p, r, p.outages[0]) }},
	{"kafka-down-5m", func(t *testing.T, p params, r *row) { scenarioKafkaDown(t, p, r, p.outages[1]) }},
	{"mosquitto-restart", scenarioBrokerRestart},
	{"max-bytes-drop-oldest", func(t *testing.T, p params, r *row) { scenarioMaxBytes(t, p, r, "drop_oldest") }},
	{"max-bytes-block", func(t *testing.T, p params, r *row) { scenarioMaxBytes(t, p, r, "block") }},
	{"disk-full", scenarioDiskFull},
	{"truncated-buffer", func(t *testing.T, p params, r *row) { scenarioDamaged(t, p, r, truncateHalf, 5000*6/10) }},
	{"bit-flipped-buffer", func(t *testing.T, p params, r *row) { scenarioDamaged(t, p, r, flipBits, 0) }},
	{"deleted-buffer", scenarioDeleted},
}

// TestChaos runs every scenario and logs a table of what each measured.
func TestChaos(t *testing.T) {
	p := suiteParams(t)
	mode := "short"
	if p.long {
		mode = "long"
	}
	t.Logf("chaos suite, %s (%s=long or -chaos.long for the long one); seed %d (%s=%d to repeat); ferry %s; supervisor: %s Restart=%s RestartSec=%v (unit: %v) RestartPreventExitStatus=%v WatchdogSec=%v",
		mode, envMode, p.seed, envSeed, p.seed, strings.Join(ferryArgv, " "), unitPath, p.unit.Restart, p.restartDelay, p.unit.RestartDelay, p.unit.PreventExit, p.unit.Watchdog)
	start := time.Now()
	var rows []*row
	for _, sc := range scenarios {
		r := &row{name: sc.name}
		rows = append(rows, r)
		t.Run(sc.name, func(t *testing.T) {
			began := time.Now()
			defer func() {
				r.took = time.Since(began)
				switch {
				case t.Skipped():
					r.result = "SKIP"
				case t.Failed():
					r.result = "FAIL"
				default:
					r.result = "PASS"
				}
				for _, n := range r.notes {
					t.Log(n)
				}
				t.Logf("%s:\n%s", sc.name, table([]*row{r}))
			}()
			sc.run(t, p, r)
		})
	}
	rows = slices.DeleteFunc(rows, func(r *row) bool { return r.result == "" }) // not selected by -run
	t.Logf("chaos suite (%s) took %v:\n%s", mode, time.Since(start).Round(time.Second), table(rows))
}

// row is what one scenario measured.
type row struct {
	name   string
	result string // PASS, FAIL, SKIP
	took   time.Duration

	rep          testenv.Report
	dropped      map[string]uint64 // by reason, from ferry's status records
	deadLettered map[string]uint64
	corrupt      int // damaged buffer files moved aside

	kills, killsBeforeReady int
	runs                    []run
	restarts                int    // processes the supervisor started after one ended
	own                     int    // processes that ended on their own (or by the watchdog)
	exits                   string // how the processes ended, counted
	gaveUp                  string // why the supervisor (systemd) stopped restarting ferry
	running                 bool   // ferry ran, ready, when delivery had settled
	finalStop               string // exit status of the final systemctl stop
	verify                  string // ferry buffer verify on the file at the end
	notes                   []string
}

func (r *row) note(format string, args ...any) {
	r.notes = append(r.notes, fmt.Sprintf(format, args...))
}

// setRuns records how the processes ended.
func (r *row) setRuns(runs []run) {
	r.runs, r.own, r.restarts = runs, 0, 0
	var order []string
	counts := map[string]int{}
	for _, x := range runs {
		label := x.end.String()
		switch x.cause {
		case causeChaosKill:
			label += " by test"
		case causeStop:
			label += " on stop"
		default:
			r.own++
		}
		if x.restarted {
			r.restarts++
		}
		if counts[label] == 0 {
			order = append(order, label)
		}
		counts[label]++
	}
	var parts []string
	for _, l := range order {
		parts = append(parts, fmt.Sprintf("%s x%d", l, counts[l]))
	}
	r.exits = strings.Join(parts, ", ")
}

// table formats rows for the test log.
func table(rows []*row) string {
	var b strings.Builder
	w := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "scenario\tresult\tacked\tdelivered\tlost\tdup\tooo\tdropped\tdead-lettered\tmoved aside\tkills\trestarts\town exits\texits\tend\ttook")
	for _, r := range rows {
		if r.result == "SKIP" && r.rep.Sent == 0 {
			fmt.Fprintf(w, "%s\tSKIP\n", r.name)
			continue
		}
		end := "running"
		switch {
		case r.gaveUp != "":
			end = "DOWN: " + r.gaveUp
		case !r.running:
			end = "not running"
		}
		fmt.Fprintf(w, "%s\t%s\t%d\t%d\t%d\t%d\t%d\t%s\t%s\t%d\t%d\t%d\t%d\t%s\t%s\t%v\n",
			r.name, r.result, r.rep.Sent, r.rep.Delivered, r.rep.Lost, r.rep.Duplicates, r.rep.OutOfOrder,
			reasons(r.dropped), reasons(r.deadLettered), r.corrupt, r.kills, r.restarts, r.own, r.exits, end, r.took.Round(time.Second))
	}
	w.Flush()
	return b.String()
}

// reasons formats counts by reason: "max_bytes=12345", or "-".
func reasons(m map[string]uint64) string {
	if len(m) == 0 {
		return "-"
	}
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(m)) {
		parts = append(parts, fmt.Sprintf("%s=%d", k, m[k]))
	}
	return strings.Join(parts, ",")
}

// lossRule is what the configured policy allows to be lost: nothing, or
// as many messages as ferry counted as dropped or dead-lettered.
type lossRule int

const (
	lossNone       lossRule = iota
	lossMaxBytes            // when_full: drop_oldest: up to the max_bytes drops
	lossAnyDrop             // up to every drop, whatever its reason
	lossAnyCounted          // up to every drop and dead letter
)

// expect is what a scenario must see.
type expect struct {
	loss        lossRule
	duplicates  bool // a crash or a stop during an outage may send records twice
	counted     bool // drops or dead letters are allowed (a policy acted)
	maxOwnExits int  // exits ferry may make on its own
	minAcked    int  // the scenario did what it claims only with at least this many messages
	// uncountable is how many lost messages no count can explain: a
	// truncation that cut off bbolt's newest pages (the tree's root and
	// the counters with it) leaves salvage the records it finds, not
	// how many there were after them.
	uncountable int
}

// allowance is how many lost messages r's counted drops explain under rule.
func (r *row) allowance(rule lossRule) int {
	switch rule {
	case lossMaxBytes:
		return int(r.dropped["max_bytes"])
	case lossAnyDrop:
		return int(sum(r.dropped))
	case lossAnyCounted:
		return int(sum(r.dropped) + sum(r.deadLettered))
	}
	return 0
}

// check applies the suite's assertions to a scenario's row.
func check(t *testing.T, r *row, x expect) {
	t.Helper()
	rep := r.rep
	if rep.Sent < x.minAcked {
		t.Errorf("the broker acknowledged %d messages, fewer than the %d this scenario needs", rep.Sent, x.minAcked)
	}
	if rep.OutOfOrder > 0 {
		t.Errorf("%d messages out of order: %v", rep.OutOfOrder, rep.OutOfOrderSample)
	}
	if rep.Unparsed > 0 || rep.SplitDevices > 0 {
		t.Errorf("%d unparsable records, %d devices split over partitions", rep.Unparsed, rep.SplitDevices)
	}
	if x.loss != lossNone && uint64(rep.Lost) < sum(r.dropped) {
		r.note("ferry counted %d drops (%s) for %d lost messages: %d dropped records reached Kafka anyway",
			sum(r.dropped), reasons(r.dropped), rep.Lost, sum(r.dropped)-uint64(rep.Lost))
	}
	if allowed := r.allowance(x.loss) + x.uncountable; rep.Lost > allowed {
		t.Errorf("lost %d of %d acknowledged messages; ferry counted %d of them (dropped %s, dead-lettered %s; %d files moved aside); lost: %v",
			rep.Lost, rep.Sent, allowed, reasons(r.dropped), reasons(r.deadLettered), r.corrupt, rep.LostSample)
	}
	if !x.duplicates && rep.Duplicates > 0 {
		t.Errorf("%d duplicates (%d resent with the same identity) without a crash", rep.Duplicates, rep.ResentDuplicates)
	}
	if !x.counted && (len(r.dropped) > 0 || len(r.deadLettered) > 0) {
		t.Errorf("records dropped (%s) or dead-lettered (%s) where no policy calls for it", reasons(r.dropped), reasons(r.deadLettered))
	}
	if r.own > x.maxOwnExits {
		t.Errorf("ferry exited on its own %d times (at most %d allowed): %s", r.own, x.maxOwnExits, r.exits)
	}
	for _, x := range r.runs {
		if x.cause != causeChaosKill && x.cause != causeStop {
			t.Logf("ferry process #%d (pid %d) ended on its own after %v: exit %s; restarted: %v %s; last status %q",
				x.n, x.pid, x.lived.Round(time.Millisecond), x.end, x.restarted, x.notRestart, x.lastStatus)
		}
	}
	if r.gaveUp != "" {
		t.Errorf("ferry stayed down: systemd would not restart it (%s)", r.gaveUp)
	} else if !r.running {
		t.Errorf("ferry was not running (ready) at the end")
	}
	if r.running && r.finalStop != "0" {
		t.Errorf("systemctl stop at the end: exit %s, want 0", r.finalStop)
	}
	if r.verify != "ok" {
		t.Errorf("ferry buffer verify at the end: %s", r.verify)
	}
}
