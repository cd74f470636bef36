package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"
	"unicode/utf8"

	"github.com/ferry-edge/ferry/buffer"
	"github.com/ferry-edge/ferry/config"
	"github.com/ferry-edge/ferry/internal/admin"
)

const bufferUsage = `usage: ferry buffer <command> [-c FILE | --path PATH] [flags]

Inspect and repair ferry's buffer. The buffer is named by the configuration
file (-c, default /etc/ferry/ferry.yaml; its buffer.path) or directly
(--path). stats, peek, export, verify, dlq list and dlq export work on a
running ferry's buffer through its admin socket (<buffer path>.sock)
without disturbing it, or on the file itself while ferry is stopped. dlq
replay and dlq purge go through the running ferry (its buffer's only
writer) or change the file while ferry is stopped. purge, compact and
verify --salvage need ferry stopped.

commands:
  stats    [--json]             records, bytes, oldest and newest age, file
                                size, bytes in use (what max_bytes bounds),
                                retired and free space, dead letters, drops
  peek     [-n N] [--json]      the next N records (default 10) from the head
  verify   [--salvage NEW]      bbolt's consistency check (offline only) and
                                every batch's and record's checksum; exit 1
                                on damage. --salvage copies every intact
                                record (same sequence numbers) into the new
                                buffer file NEW and sets the damaged ones
                                aside in its dead-letter bucket; stop
                                ferry, then move NEW over the buffer file
                                to use it.
  export   [-o FILE]            every record as JSON lines (default stdout);
                                exit 1 if some could not be read
  purge    --older-than D       remove the records received more than D ago
                                (a Go duration, e.g. 72h) from the head;
                                counted as dropped, reason "purged"
  compact                       rewrite the file without its free pages and
                                retired (delivered) batches

dead letters: records moved out of the buffer because they can never be
delivered (Kafka rejects them for good, their topic is invalid) or cannot
be decoded. They are kept, counted by reason, bounded by
buffer.max_dead_letter_bytes (oldest dropped, counted) apart from max_bytes.
  dlq list   [--reason R] [--seq N] [--limit N] [--json]
                                seq, reason, when dead-lettered, when
                                received, MQTT topic, payload size, detail
  dlq export [--reason R] [--seq N] [-o FILE]
                                as JSON lines: the export format plus reason,
                                detail, dead_lettered_at, records, size (and
                                raw_base64, error for an undecodable one)
  dlq replay --all | [--reason R] [--seq N]
                                move them back into the buffer as new records
                                (new sequence numbers, receive time and
                                properties kept). Fix the cause first (the
                                route, the topic, Kafka's limits), or they
                                fail again. They go to the tail: after every
                                record already buffered, newer ones too.
                                Undecodable ones stay.
  dlq purge  --all | [--reason R] [--seq N]
                                delete them; counted as dropped, reason
                                "dead_letter_purged"

export format, one JSON object per line:
  {"seq":17,"topic":"sensors/a/t","qos":1,"retain":false,
   "received_at":"2024-05-01T12:00:00.123456789Z","payload":"{\"t\":21.5}",
   "content_type":"application/json","response_topic":"r",
   "correlation_data":"AQI=","user_properties":[["k","v"]]}
  payload is the payload as a string when it is valid UTF-8; otherwise
  payload_base64 holds it in standard base64. payload_utf8 is the MQTT v5
  payload format indicator. content_type, response_topic, correlation_data
  (base64), payload_utf8 and user_properties appear only when set.

dlq export format, one JSON object per line:
  {"seq":17,"reason":"message_too_large","detail":"...",
   "dead_lettered_at":"2024-05-01T12:00:01Z","records":1,"size":2100,
   "topic":"sensors/a/t",...the record as above}

exit status: 0 ok, 1 failure or damage found, 2 bad usage or configuration
`

// errFerryRunning is what a command that needs the file to itself says when
// a ferry holds it.
const errFerryRunning = "ferry is running on this buffer; stop it first"

func cmdBuffer(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, bufferUsage)
		return exitUsage
	}
	cmds := map[string]func(*bufferCmd, []string) int{
		"stats":   (*bufferCmd).stats,
		"peek":    (*bufferCmd).peek,
		"verify":  (*bufferCmd).verify,
		"export":  (*bufferCmd).export,
		"purge":   (*bufferCmd).purge,
		"compact": (*bufferCmd).compact,
		"dlq":     (*bufferCmd).dlq,
	}
	name := args[0]
	if name == "help" || name == "-h" || name == "-help" || name == "--help" {
		fmt.Fprint(stdout, bufferUsage)
		return exitOK
	}
	cmd, ok := cmds[name]
	if !ok {
		fmt.Fprintf(stderr, "ferry buffer: unknown command %q\n\n%s", name, bufferUsage)
		return exitUsage
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	c := &bufferCmd{name: "buffer " + name, ctx: ctx, stdout: stdout, stderr: stderr}
	c.fs = flag.NewFlagSet("ferry "+c.name, flag.ContinueOnError)
	c.fs.SetOutput(stderr)
	c.fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: ferry %s [-c FILE | --path PATH] [flags]\n", c.name)
		c.fs.PrintDefaults()
	}
	c.fs.StringVar(&c.config, "c", "/etc/ferry/ferry.yaml", "configuration file naming the buffer")
	c.fs.StringVar(&c.path, "path", "", "buffer file (instead of -c)")
	return cmd(c, args[1:])
}

// bufferCmd is one `ferry buffer` command being run.
type bufferCmd struct {
	name           string
	ctx            context.Context
	stdout, stderr io.Writer
	fs             *flag.FlagSet
	config, path   string
}

// parse parses the flags and finds the buffer file; false means a usage or
// configuration error, already reported.
func (c *bufferCmd) parse(args []string) bool {
	if err := c.fs.Parse(args); err != nil {
		return false
	}
	if c.fs.NArg() > 0 {
		fmt.Fprintf(c.stderr, "ferry %s: unexpected argument %q\n", c.name, c.fs.Arg(0))
		return false
	}
	configSet := false
	c.fs.Visit(func(f *flag.Flag) { configSet = configSet || f.Name == "c" })
	if c.path != "" {
		if configSet {
			fmt.Fprintf(c.stderr, "ferry %s: give -c or --path, not both\n", c.name)
			return false
		}
		return true
	}
	cfg, err := config.Load(c.config)
	if err != nil {
		fmt.Fprintf(c.stderr, "ferry: invalid configuration:\n%v\n", err)
		return false
	}
	c.path = cfg.Buffer.Path
	return true
}

func (c *bufferCmd) fail(err error) int {
	if errors.Is(err, buffer.ErrLocked) {
		fmt.Fprintf(c.stderr, "ferry %s: %s (%s)\n", c.name, errFerryRunning, c.path)
		return exitFailure
	}
	fmt.Fprintf(c.stderr, "ferry %s: %v\n", c.name, err)
	return exitFailure
}

// inspector is a buffer under inspection: a running ferry's, through its
// admin socket, or a file at rest.
type inspector interface {
	Info(ctx context.Context) (buffer.Info, error)
	Peek(ctx context.Context, n int) ([]buffer.Record, error)
	Export(ctx context.Context, w io.Writer) (skipped uint64, err error)
	Verify(ctx context.Context) (buffer.VerifyReport, error)
	// DeadLetters calls fn with the dead-letter entries f selects, at
	// most limit (0: all); damaged counts entries that could not be read.
	DeadLetters(ctx context.Context, f buffer.DeadLetterFilter, limit int, fn func(buffer.DeadLetterEntry) error) (damaged uint64, err error)
	Close() error
}

// open asks a running ferry first and opens the file itself if none
// answers.
func (c *bufferCmd) open() (in inspector, live bool, err error) {
	client, err := c.liveClient()
	if err != nil {
		return nil, false, err
	}
	if client != nil {
		return client, true, nil
	}
	ro, err := buffer.OpenReadOnly(c.path)
	if errors.Is(err, buffer.ErrLocked) {
		return nil, false, fmt.Errorf("%w, and no ferry answers on %s", err, admin.SocketPath(c.path))
	}
	if err != nil {
		return nil, false, err
	}
	return fileInspector{ro}, false, nil
}

// fileInspector inspects a buffer file at rest.
type fileInspector struct{ *buffer.ReadOnly }

func (f fileInspector) Info(context.Context) (buffer.Info, error) { return f.ReadOnly.Info() }

func (f fileInspector) Peek(_ context.Context, n int) ([]buffer.Record, error) {
	return f.ReadOnly.Peek(n)
}

func (f fileInspector) Export(ctx context.Context, w io.Writer) (uint64, error) {
	return f.ReadOnly.Each(func(r buffer.Record) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		return buffer.WriteJSON(w, r)
	})
}

func (c *bufferCmd) stats(args []string) int {
	asJSON := c.fs.Bool("json", false, "print the numbers as JSON")
	if !c.parse(args) {
		return exitUsage
	}
	in, live, err := c.open()
	if err != nil {
		return c.fail(err)
	}
	defer in.Close()
	info, err := in.Info(c.ctx)
	if err != nil {
		return c.fail(err)
	}
	if *asJSON {
		writeJSONTo(c.stdout, info)
		return exitOK
	}
	w := c.stdout
	how := "file at rest"
	if live {
		how = "live, through ferry's admin socket"
	}
	now := time.Now()
	fmt.Fprintf(w, "buffer       %s (%s)\n", c.path, how)
	fmt.Fprintf(w, "records      %d (%s)", info.Records, sizeOf(int64(info.Bytes)))
	if info.Records > 0 {
		fmt.Fprintf(w, ", seq %d to %d", info.FirstSeq, info.LastSeq)
	}
	fmt.Fprintln(w)
	if info.Records > 0 {
		fmt.Fprintf(w, "oldest       %s (%s ago)\n", info.Oldest.UTC().Format(time.RFC3339), ago(now, info.Oldest))
		fmt.Fprintf(w, "newest       %s (%s ago)\n", info.Newest.UTC().Format(time.RFC3339), ago(now, info.Newest))
	}
	fmt.Fprintf(w, "file         %s, %s in use (what max_bytes bounds) and %s by dead letters, %s retired (delivered or dropped, reused by new records)\n",
		sizeOf(info.FileSize), sizeOf(info.UsedBytes-info.DeadLetterUsedBytes), sizeOf(info.DeadLetterUsedBytes), sizeOf(int64(info.RetiredBytes)))
	fmt.Fprintf(w, "reclaimable  %s (%.0f%% of the file; ferry buffer compact gives it back)\n",
		sizeOf(int64(info.FreeFraction()*float64(info.FileSize))), 100*info.FreeFraction())
	fmt.Fprintf(w, "free pages   %d free, %d pending, page size %d\n", info.FreePages, info.PendingPages, info.PageSize)
	fmt.Fprintf(w, "dead letters %d records held (%s, bounded by max_dead_letter_bytes; ferry buffer dlq list)", info.DeadLetterRecords, sizeOf(int64(info.DeadLetterBytes)))
	if reasons := slices.Sorted(maps.Keys(info.DeadLettered)); len(reasons) > 0 {
		fmt.Fprint(w, "; dead-lettered ever:")
		for i, r := range reasons {
			if i > 0 {
				fmt.Fprint(w, ",")
			}
			fmt.Fprintf(w, " %s %d", r, info.DeadLettered[r])
		}
	}
	fmt.Fprintln(w)
	for _, f := range info.CorruptFiles {
		fmt.Fprintf(w, "moved aside  %s (damaged; kept for inspection with ferry buffer --path)\n", f)
	}
	fmt.Fprintf(w, "dropped      max_bytes %d, max_age %d, purged %d, dead_letter_limit %d, dead_letter_purged %d\n",
		info.Dropped[buffer.DropMaxBytes], info.Dropped[buffer.DropMaxAge], info.Dropped[buffer.DropPurged],
		info.Dropped[buffer.DropDeadLetterLimit], info.Dropped[buffer.DropDeadLetterPurged])
	fmt.Fprintf(w, "log id       %s\n", info.ID)
	return exitOK
}

func (c *bufferCmd) peek(args []string) int {
	n := c.fs.Int("n", 10, "how many records")
	asJSON := c.fs.Bool("json", false, "print the records in the export format (JSON lines)")
	if !c.parse(args) {
		return exitUsage
	}
	if *n < 0 {
		fmt.Fprintf(c.stderr, "ferry %s: -n: want 0 or more, got %d\n", c.name, *n)
		return exitUsage
	}
	in, _, err := c.open()
	if err != nil {
		return c.fail(err)
	}
	defer in.Close()
	recs, err := in.Peek(c.ctx, *n)
	if err != nil {
		return c.fail(err)
	}
	now := time.Now()
	for _, r := range recs {
		if *asJSON {
			buffer.WriteJSON(c.stdout, r)
			continue
		}
		fmt.Fprintf(c.stdout, "%d  %s (%s ago)  %s  qos %d", r.Seq,
			r.ReceivedAt.UTC().Format(time.RFC3339Nano), ago(now, r.ReceivedAt), r.Topic, r.QoS)
		if r.Retain {
			fmt.Fprint(c.stdout, " retain")
		}
		if r.ContentType != "" {
			fmt.Fprintf(c.stdout, "  %s", r.ContentType)
		}
		for _, p := range r.UserProperties {
			fmt.Fprintf(c.stdout, "  %s=%s", p.Key, p.Value)
		}
		fmt.Fprintf(c.stdout, "\n    %s\n", payloadText(r.Payload))
	}
	return exitOK
}

// payloadText shows a payload on one line: quoted text when it is UTF-8,
// hex otherwise, cut at 200 bytes.
func payloadText(p []byte) string {
	const cut = 200
	more := ""
	if len(p) > cut {
		more = fmt.Sprintf(" ... (%d bytes)", len(p))
		p = p[:cut]
		for len(p) > 0 && !utf8.Valid(p) && len(p) > cut-4 { // do not split a rune
			p = p[:len(p)-1]
		}
	}
	if utf8.Valid(p) {
		return fmt.Sprintf("%q%s", p, more)
	}
	return fmt.Sprintf("hex %x%s", p, more)
}

func (c *bufferCmd) verify(args []string) int {
	salvage := c.fs.String("salvage", "", "copy the intact records into this new buffer file")
	if !c.parse(args) {
		return exitUsage
	}
	if *salvage != "" {
		return c.salvage(*salvage)
	}
	in, live, err := c.open()
	if err != nil {
		return c.fail(err)
	}
	defer in.Close()
	rep, err := in.Verify(c.ctx)
	c.printReport(rep, live)
	if err != nil {
		return c.fail(err)
	}
	if !rep.OK() {
		return exitFailure
	}
	return exitOK
}

func (c *bufferCmd) printReport(rep buffer.VerifyReport, live bool) {
	w := c.stdout
	for _, p := range rep.Problems {
		fmt.Fprintf(w, "problem: %s\n", p)
	}
	for _, d := range rep.Damaged {
		switch {
		case d.Seq == 0:
			fmt.Fprintf(w, "damaged batch %d: %s (its records are checked one by one)\n", d.Batch, d.Err)
		case d.Records == 1:
			fmt.Fprintf(w, "damaged record %d (batch %d): %s\n", d.Seq, d.Batch, d.Err)
		default:
			fmt.Fprintf(w, "damaged batch %d: %s: %d records from %d unreadable\n", d.Batch, d.Err, d.Records, d.Seq)
		}
	}
	structure := "bbolt structure checked"
	if !rep.StructureChecked {
		structure = "bbolt structure not checked"
		if live {
			structure += " (ferry is running; stop it for a full check)"
		}
	}
	verdict := "ok"
	if !rep.OK() {
		verdict = fmt.Sprintf("DAMAGED: %d problems, %d unreadable records", len(rep.Problems), rep.Unreadable())
	}
	fmt.Fprintf(w, "%s: %d batches, %d intact records, %d dead-letter entries; %s; %s\n", c.path, rep.Batches, rep.Records, rep.DeadLetters, structure, verdict)
}

func (c *bufferCmd) salvage(dst string) int {
	ro, err := buffer.OpenReadOnly(c.path)
	if errors.Is(err, buffer.ErrCorruptFile) {
		// Too damaged for bbolt to open (truncated, meta pages lost):
		// salvage page by page.
		fmt.Fprintf(c.stdout, "%s: %v\n", c.path, err)
		n, err := buffer.SalvageFile(c.path, dst)
		if err != nil {
			return c.fail(err)
		}
		fmt.Fprintf(c.stdout, "salvaged %d records into %s, page by page\n", n, dst)
		c.printUse(dst)
		return exitFailure
	}
	if err != nil {
		return c.fail(err)
	}
	defer ro.Close()
	rep, verr := ro.Verify(c.ctx)
	c.printReport(rep, false)
	n, err := ro.Salvage(dst)
	if err != nil {
		return c.fail(err)
	}
	fmt.Fprintf(c.stdout, "salvaged %d records into %s; %d unreadable set aside in its dead-letter bucket\n", n, dst, rep.Unreadable())
	c.printUse(dst)
	if verr != nil {
		return c.fail(verr)
	}
	return exitOK
}

// printUse says how to put a salvaged file in the buffer's place: with the
// damage mark removed too, if there is one, or ferry refuses the new file.
func (c *bufferCmd) printUse(dst string) {
	mark := buffer.DamageMark(c.path)
	if _, err := os.Stat(mark); err == nil {
		fmt.Fprintf(c.stdout, "to use it, with ferry stopped: mv %s %s && rm %s\n", shellQuote(dst), shellQuote(c.path), shellQuote(mark))
		return
	}
	fmt.Fprintf(c.stdout, "to use it, with ferry stopped: mv %s %s\n", shellQuote(dst), shellQuote(c.path))
}

// shellQuote quotes s for a POSIX shell, unless it needs none.
func shellQuote(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789/._-+:,@%=") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

func (c *bufferCmd) export(args []string) int {
	out := c.fs.String("o", "", "write to this new file instead of stdout")
	if !c.parse(args) {
		return exitUsage
	}
	in, _, err := c.open()
	if err != nil {
		return c.fail(err)
	}
	defer in.Close()
	w := c.stdout
	var f *os.File
	if *out != "" {
		if f, err = os.OpenFile(*out, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600); err != nil {
			return c.fail(err)
		}
		defer f.Close()
		w = f
	}
	lines := &lineCounter{w: w}
	skipped, err := in.Export(c.ctx, lines)
	if err == nil && f != nil {
		err = f.Sync()
	}
	if err != nil {
		return c.fail(fmt.Errorf("export stopped after %d records: %w", lines.n, err))
	}
	fmt.Fprintf(c.stderr, "exported %d records\n", lines.n)
	if skipped > 0 {
		fmt.Fprintf(c.stderr, "ferry %s: %d records could not be read and are not in the export; see ferry buffer verify\n", c.name, skipped)
		return exitFailure
	}
	return exitOK
}

// lineCounter counts the lines written through it.
type lineCounter struct {
	w io.Writer
	n int
}

func (l *lineCounter) Write(p []byte) (int, error) {
	n, err := l.w.Write(p)
	l.n += strings.Count(string(p[:n]), "\n")
	return n, err
}

func (c *bufferCmd) purge(args []string) int {
	olderThan := c.fs.Duration("older-than", 0, "remove records received longer ago than this (required), e.g. 72h")
	if !c.parse(args) {
		return exitUsage
	}
	if *olderThan <= 0 {
		fmt.Fprintf(c.stderr, "ferry %s: --older-than: want a duration above 0, like 72h\n", c.name)
		return exitUsage
	}
	cutoff := time.Now().Add(-*olderThan)
	n, err := buffer.Purge(c.path, cutoff)
	if err != nil {
		return c.fail(err)
	}
	fmt.Fprintf(c.stdout, "purged %d records received before %s from %s\n", n, cutoff.UTC().Format(time.RFC3339), c.path)
	return exitOK
}

func (c *bufferCmd) compact(args []string) int {
	if !c.parse(args) {
		return exitUsage
	}
	before, after, err := buffer.Compact(c.path)
	if err != nil {
		return c.fail(err)
	}
	fmt.Fprintf(c.stdout, "compacted %s: %s -> %s\n", c.path, sizeOf(before), sizeOf(after))
	return exitOK
}

func writeJSONTo(w io.Writer, v any) {
	b, _ := json.MarshalIndent(v, "", "  ")
	w.Write(append(b, '\n'))
}

// sizeOf formats a byte count in binary units.
func sizeOf(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// ago formats how long before now t was, to the second.
func ago(now, t time.Time) string {
	return now.Sub(t).Truncate(time.Second).String()
}
