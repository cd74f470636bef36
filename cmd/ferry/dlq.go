package main

// ferry buffer dlq: the dead-letter bucket, live through a running ferry's
// admin socket or on the file at rest.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"text/tabwriter"
	"time"

	"github.com/ferry-edge/ferry/buffer"
	"github.com/ferry-edge/ferry/internal/admin"
)

func (c *bufferCmd) dlq(args []string) int {
	cmds := map[string]func(*bufferCmd, []string) int{
		"list":   (*bufferCmd).dlqList,
		"export": (*bufferCmd).dlqExport,
		"replay": (*bufferCmd).dlqReplay,
		"purge":  (*bufferCmd).dlqPurge,
	}
	if len(args) == 0 {
		fmt.Fprintf(c.stderr, "ferry buffer dlq: want a command: list, export, replay or purge\n\n%s", bufferUsage)
		return exitUsage
	}
	cmd, ok := cmds[args[0]]
	if !ok {
		fmt.Fprintf(c.stderr, "ferry buffer dlq: unknown command %q (want list, export, replay or purge)\n", args[0])
		return exitUsage
	}
	c.name = "buffer dlq " + args[0]
	return cmd(c, args[1:])
}

// filterFlags adds --reason and --seq, and for replay and purge --all.
func (c *bufferCmd) filterFlags(withAll bool) func() (buffer.DeadLetterFilter, bool) {
	reason := c.fs.String("reason", "", "only dead letters with this reason, e.g. message_too_large")
	seq := c.fs.Uint64("seq", 0, "only the dead letter of this sequence number")
	var all *bool
	if withAll {
		all = c.fs.Bool("all", false, "every dead letter")
	}
	return func() (buffer.DeadLetterFilter, bool) {
		f := buffer.DeadLetterFilter{Reason: buffer.Reason(*reason), Seq: *seq}
		if withAll && (*all == (f != buffer.DeadLetterFilter{})) {
			fmt.Fprintf(c.stderr, "ferry %s: give --all, or --reason and/or --seq, to say which dead letters\n", c.name)
			return f, false
		}
		return f, true
	}
}

func (c *bufferCmd) dlqList(args []string) int {
	filter := c.filterFlags(false)
	limit := c.fs.Int("limit", 0, "list at most this many (0: all)")
	asJSON := c.fs.Bool("json", false, "print the entries in the export format (JSON lines)")
	if !c.parse(args) {
		return exitUsage
	}
	f, ok := filter()
	if !ok {
		return exitUsage
	}
	if *limit < 0 {
		fmt.Fprintf(c.stderr, "ferry %s: --limit: want 0 (all) or more, got %d\n", c.name, *limit)
		return exitUsage
	}
	in, _, err := c.open()
	if err != nil {
		return c.fail(err)
	}
	defer in.Close()
	tw := tabwriter.NewWriter(c.stdout, 0, 0, 2, ' ', 0)
	if !*asJSON {
		fmt.Fprintln(tw, "SEQ\tREASON\tDEAD-LETTERED\tRECEIVED\tTOPIC\tPAYLOAD\tDETAIL")
	}
	n := 0
	damaged, err := in.DeadLetters(c.ctx, f, *limit, func(e buffer.DeadLetterEntry) error {
		n++
		if *asJSON {
			return buffer.WriteDeadLetterJSON(c.stdout, e)
		}
		received, topic, size := "-", "-", fmt.Sprintf("%d B stored, undecodable", len(e.Raw))
		if e.Record != nil {
			received = e.Record.ReceivedAt.UTC().Format(time.RFC3339)
			topic = e.Record.Topic
			size = sizeOf(int64(len(e.Record.Payload)))
		} else if e.Records > 1 {
			size = fmt.Sprintf("batch of %d records, %d B", e.Records, len(e.Raw))
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\n", e.Seq, e.Reason, e.DeadLetteredAt.UTC().Format(time.RFC3339),
			received, topic, size, oneLine(e.Detail))
		return nil
	})
	if !*asJSON && n > 0 {
		tw.Flush()
	}
	if err != nil {
		return c.fail(err)
	}
	if n == 0 && !*asJSON {
		fmt.Fprintln(c.stdout, "no dead letters")
	}
	return c.damagedEntries(damaged)
}

// oneLine cuts an error text to one line of at most 160 bytes.
func oneLine(s string) string {
	for i, r := range s {
		if r == '\n' || i >= 160 {
			return s[:i] + " ..."
		}
	}
	return s
}

// damagedEntries reports dead-letter entries that could not be read.
func (c *bufferCmd) damagedEntries(n uint64) int {
	if n == 0 {
		return exitOK
	}
	fmt.Fprintf(c.stderr, "ferry %s: %d dead-letter entries could not be read; see ferry buffer verify\n", c.name, n)
	return exitFailure
}

func (c *bufferCmd) dlqExport(args []string) int {
	filter := c.filterFlags(false)
	out := c.fs.String("o", "", "write to this new file instead of stdout")
	if !c.parse(args) {
		return exitUsage
	}
	f, ok := filter()
	if !ok {
		return exitUsage
	}
	in, _, err := c.open()
	if err != nil {
		return c.fail(err)
	}
	defer in.Close()
	w := io.Writer(c.stdout)
	var file *os.File
	if *out != "" {
		if file, err = os.OpenFile(*out, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600); err != nil {
			return c.fail(err)
		}
		defer file.Close()
		w = file
	}
	n := 0
	damaged, err := in.DeadLetters(c.ctx, f, 0, func(e buffer.DeadLetterEntry) error {
		if err := c.ctx.Err(); err != nil {
			return err
		}
		n++
		return buffer.WriteDeadLetterJSON(w, e)
	})
	if err == nil && file != nil {
		err = file.Sync()
	}
	if err != nil {
		return c.fail(fmt.Errorf("export stopped after %d dead letters: %w", n, err))
	}
	fmt.Fprintf(c.stderr, "exported %d dead letters\n", n)
	return c.damagedEntries(damaged)
}

// liveClient returns a client of the ferry running on the buffer, or nil if
// none answers on its admin socket.
func (c *bufferCmd) liveClient() (*admin.Client, error) {
	sock := admin.SocketPath(c.path)
	if _, err := os.Stat(sock); err != nil {
		return nil, nil
	}
	client := admin.NewClient(sock)
	pctx, cancel := context.WithTimeout(c.ctx, 5*time.Second)
	_, err := client.Info(pctx)
	cancel()
	if err == nil {
		return client, nil
	}
	client.Close()
	if errors.Is(err, admin.ErrNotServing) {
		return nil, nil
	}
	return nil, err
}

func (c *bufferCmd) dlqReplay(args []string) int {
	filter := c.filterFlags(true)
	if !c.parse(args) {
		return exitUsage
	}
	f, ok := filter()
	if !ok {
		return exitUsage
	}
	client, err := c.liveClient()
	if err != nil {
		return c.fail(err)
	}
	var res buffer.ReplayResult
	how := "file at rest"
	if client != nil {
		defer client.Close()
		how = "live, through ferry's admin socket"
		res, err = client.ReplayDeadLetters(c.ctx, f)
	} else {
		res, err = buffer.ReplayDeadLetters(c.path, f)
	}
	if err != nil {
		return c.fail(err)
	}
	if res.Replayed > 0 {
		fmt.Fprintf(c.stdout, "replayed %d dead letters into %s (%s) as records %d to %d, after every record already buffered\n",
			res.Replayed, c.path, how, res.FirstSeq, res.LastSeq)
	} else {
		fmt.Fprintf(c.stdout, "no dead letters replayed (%s)\n", how)
	}
	if res.Kept > 0 {
		fmt.Fprintf(c.stdout, "%d selected entries kept: they cannot be decoded (see ferry buffer dlq list)\n", res.Kept)
	}
	return exitOK
}

func (c *bufferCmd) dlqPurge(args []string) int {
	filter := c.filterFlags(true)
	if !c.parse(args) {
		return exitUsage
	}
	f, ok := filter()
	if !ok {
		return exitUsage
	}
	client, err := c.liveClient()
	if err != nil {
		return c.fail(err)
	}
	var n uint64
	how := "file at rest"
	if client != nil {
		defer client.Close()
		how = "live, through ferry's admin socket"
		n, err = client.PurgeDeadLetters(c.ctx, f)
	} else {
		n, err = buffer.PurgeDeadLetters(c.path, f)
	}
	if err != nil {
		return c.fail(err)
	}
	fmt.Fprintf(c.stdout, "purged %d dead-letter records from %s (%s); counted as dropped, reason %q\n", n, c.path, how, buffer.DropDeadLetterPurged)
	return exitOK
}

// DeadLetters is the dead-letter listing of a file at rest.
func (f fileInspector) DeadLetters(ctx context.Context, filter buffer.DeadLetterFilter, limit int, fn func(buffer.DeadLetterEntry) error) (uint64, error) {
	n := 0
	damaged, err := f.ReadOnly.EachDeadLetter(filter, func(e buffer.DeadLetterEntry) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		if limit > 0 && n == limit {
			return errLimitReached
		}
		n++
		return fn(e)
	})
	if errors.Is(err, errLimitReached) {
		err = nil
	}
	return damaged, err
}

// errLimitReached ends a listing at --limit.
var errLimitReached = errors.New("limit reached")
