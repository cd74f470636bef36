// Command ferry forwards MQTT messages to Kafka through a durable on-disk
// buffer. See README.md.
//
// Exit codes: 0 clean stop, 1 runtime failure, 2 bad usage or configuration.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"syscall"
	"time"

	"github.com/ferry-edge/ferry/buffer"
	"github.com/ferry-edge/ferry/config"
	"github.com/ferry-edge/ferry/internal/admin"
	"github.com/ferry-edge/ferry/internal/agent"
	"github.com/ferry-edge/ferry/internal/metrics"
)

// Build stamps, set with -ldflags "-X main.version=... -X main.commit=...
// -X main.date=..." (go run ./cmd/ferry-dist does).
var (
	version = "dev"
	commit  = "" // the git commit built
	date    = "" // the commit's time, RFC 3339, so builds are reproducible
)

const (
	exitOK      = 0
	exitFailure = 1
	exitUsage   = 2
)

const usage = `usage: ferry <command> [flags]

commands:
  run     -c FILE   run the agent
  check   -c FILE   validate FILE and print the effective configuration
  status  -c FILE   summarize the running ferry that uses FILE
  buffer  <command> inspect and repair the buffer: stats, peek, verify,
                    export, purge, compact (ferry buffer help)
  version           print the version
`

func main() {
	runtimeDefaults(os.Getenv)
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return exitUsage
	}
	switch args[0] {
	case "run":
		return cmdRun(args[1:], stderr)
	case "check":
		return cmdCheck(args[1:], stdout, stderr)
	case "status":
		return cmdStatus(args[1:], stdout, stderr)
	case "buffer":
		return cmdBuffer(args[1:], stdout, stderr)
	case "version", "-version", "--version":
		fmt.Fprintf(stdout, "ferry %s (commit %s, built %s, %s)\n", version, orUnknown(commit), orUnknown(date), goVersion())
		return exitOK
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, usage)
		return exitOK
	}
	fmt.Fprintf(stderr, "ferry: unknown command %q\n\n%s", args[0], usage)
	return exitUsage
}

func orUnknown(s string) string {
	if s == "" {
		return "unknown"
	}
	return s
}

func goVersion() string {
	if bi, ok := debug.ReadBuildInfo(); ok {
		return bi.GoVersion
	}
	return ""
}

// loadConfig parses the -c flag and loads the file, printing errors. It
// reads no other file: the commands that only need to find the buffer or
// the running ferry work without access to its secrets.
func loadConfig(name string, args []string, stderr io.Writer) (*config.Config, bool) {
	cfg, _, ok := loadConfigPath(name, args, config.Load, stderr)
	return cfg, ok
}

// loadConfigPath parses the -c flag and loads the file with load
// (config.Load, or config.LoadAndCheck to read the files it names too),
// printing errors; it also returns the file's path.
func loadConfigPath(name string, args []string, load func(string) (*config.Config, error), stderr io.Writer) (*config.Config, string, bool) {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("c", "/etc/ferry/ferry.yaml", "configuration file")
	if err := fs.Parse(args); err != nil {
		return nil, "", false
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "ferry %s: unexpected argument %q\n", name, fs.Arg(0))
		return nil, "", false
	}
	cfg, err := load(*path)
	if err != nil {
		fmt.Fprintf(stderr, "ferry: invalid configuration:\n%v\n", err)
		return nil, "", false
	}
	return cfg, *path, true
}

func cmdCheck(args []string, stdout, stderr io.Writer) int {
	cfg, _, ok := loadConfigPath("check", args, config.LoadAndCheck, stderr)
	if !ok {
		return exitUsage
	}
	for _, w := range cfg.Warnings {
		fmt.Fprintf(stderr, "warning: %s\n", w)
	}
	out, err := cfg.Masked()
	if err != nil {
		fmt.Fprintf(stderr, "ferry check: %v\n", err)
		return exitFailure
	}
	stdout.Write(out)
	writeRoutes(stdout, cfg)
	return exitOK
}

func cmdRun(args []string, stderr io.Writer) int {
	cfg, path, ok := loadConfigPath("run", args, config.LoadAndCheck, stderr)
	if !ok {
		return exitUsage
	}
	// SIGHUP's default action ends the process: until the reload handler
	// is in place (and after it is gone, during the clean stop) ignore it.
	signal.Ignore(syscall.SIGHUP)
	level := new(slog.LevelVar)
	log := newLogger(cfg.Log, level, stderr)
	for _, w := range cfg.Warnings {
		log.Warn("config: " + w)
	}
	log.Info("go runtime", "gomaxprocs", runtime.GOMAXPROCS(0), "gogc", gcPercent())
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	// The first signal starts a clean stop; a second one ends the process
	// at once (the default action), should the clean stop hang.
	context.AfterFunc(ctx, stop)

	watchdog := watchdogInterval(log)
	m := metrics.New(metrics.Build{Version: version, Commit: commit, Date: date})
	// Opening the buffer may salvage a damaged file first, which can take
	// longer than systemd's start timeout on a slow card: ask for more
	// time while it runs.
	opened, extended := make(chan struct{}), make(chan struct{})
	go func() { extendStartWhile(opened); close(extended) }()
	a, err := agent.New(cfg, log, agent.Options{Hooks: m.Hooks(), StallLimit: watchdog, Version: version})
	close(opened)
	<-extended
	if err != nil {
		log.Error("cannot start", "err", err)
		return exitFailure
	}
	m.Attach(a)
	statusCtx, stopStatus := context.WithCancel(ctx)
	defer stopStatus()
	go a.LogStatus(statusCtx, time.Minute)
	defer serveAdmin(ctx, a.Buffer(), statusFunc(cfg, a), log)()
	defer serveMetrics(ctx, cfg.Admin.Listen, m, log)()
	defer notifySystemd(ctx, a, watchdog, log)()
	defer reloadOnHUP(ctx, path, cfg, level, a, log)()
	if err := a.Run(ctx); err != nil {
		log.Error("ferry failed", "err", err)
		return exitFailure
	}
	if errors.Is(ctx.Err(), context.Canceled) {
		log.Info("clean stop")
	}
	return exitOK
}

// serveAdmin serves the buffer on its admin socket until ctx is done or the
// returned stop is called; stop returns once the socket is gone. Without a
// socket ferry runs on, and says so.
func serveAdmin(ctx context.Context, buf *buffer.Buffer, status func() any, log *slog.Logger) (stop func()) {
	srv, err := admin.Listen(admin.SocketPath(buf.Path()), buf, log.With("component", "admin"))
	if err != nil {
		log.Warn("no admin socket: ferry buffer commands cannot inspect the buffer while ferry runs", "err", err)
		return func() {}
	}
	srv.SetStatus(status)
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(ctx); err != nil {
			log.Warn("admin socket failed", "err", err)
		}
	}()
	return func() { cancel(); <-done }
}

// serveMetrics serves /metrics, /healthz and /readyz on addr until ctx is
// done or the returned stop is called. With addr "" it does nothing; if
// addr cannot be bound ferry runs on without metrics, and says so.
func serveMetrics(ctx context.Context, addr string, m *metrics.Metrics, log *slog.Logger) (stop func()) {
	if addr == "" {
		return func() {}
	}
	log = log.With("component", "metrics")
	srv, err := metrics.Listen(addr, m, log)
	if err != nil {
		log.Warn("no metrics endpoint", "err", err)
		return func() {}
	}
	log.Info("serving /metrics, /healthz and /readyz", "addr", srv.Addr())
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(ctx); err != nil {
			log.Warn("metrics endpoint failed", "err", err)
		}
	}()
	return func() { cancel(); <-done }
}

// newLogger returns the logger c asks for, its level held in level (which
// a reload may change).
func newLogger(c config.Log, level *slog.LevelVar, w io.Writer) *slog.Logger {
	var l slog.Level
	if err := l.UnmarshalText([]byte(c.Level)); err != nil {
		l = slog.LevelInfo
	}
	level.Set(l)
	opts := &slog.HandlerOptions{Level: level}
	if os.Getenv("JOURNAL_STREAM") != "" && c.Format != "json" {
		// Under systemd the journal stamps every line: no second time.
		opts.ReplaceAttr = func(groups []string, a slog.Attr) slog.Attr {
			if a.Key == slog.TimeKey && len(groups) == 0 {
				return slog.Attr{}
			}
			return a
		}
	}
	if c.Format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}
