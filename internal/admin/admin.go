// Package admin is ferry's local admin endpoint: HTTP over a unix socket
// next to the buffer file, so `ferry buffer` can inspect the buffer of a
// running ferry, which holds the file's lock, and act on its dead letters.
//
// The socket is created with mode 0600 (only ferry's user, and root, may
// connect) and removed when the server stops. The GET endpoints change
// nothing: reads go through the buffer's inspection methods, in short read
// transactions beside the committer. The two POST endpoints replay or purge
// dead letters through the committer, the buffer's only writer, and answer
// once the change is durable.
//
// Endpoints:
//
//	GET  /v1/stats        buffer.Info as JSON
//	GET  /v1/peek?n=N     the next N records (default 10), JSON lines
//	GET  /v1/export       every live record, JSON lines; trailers Ferry-Skipped
//	                      (records that could not be decoded) and Ferry-Error
//	GET  /v1/verify       buffer.VerifyReport as JSON
//	GET  /v1/dlq?reason=R&seq=N&limit=N
//	                      dead-letter entries (all: no reason, seq or limit),
//	                      buffer.JSONDeadLetter lines; trailers Ferry-Damaged
//	                      (entries that could not be read) and Ferry-Error
//	POST /v1/dlq/replay?reason=R&seq=N   buffer.ReplayResult as JSON
//	POST /v1/dlq/purge?reason=R&seq=N    {"purged": records} as JSON
//	GET  /v1/status       the running ferry's status as JSON (see SetStatus),
//	                      for ferry status
package admin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"
	"time"

	"github.com/ferry-edge/ferry/buffer"
)

// SocketPath is where the admin socket of the buffer at bufferPath lives.
func SocketPath(bufferPath string) string { return bufferPath + ".sock" }

// maxPeek bounds peek's n.
const maxPeek = 10000

// Server serves one buffer on a unix socket.
type Server struct {
	path string
	ln   net.Listener
	buf  *buffer.Buffer
	log  *slog.Logger

	status func() any // see SetStatus
}

// Listen creates the socket at path (mode 0600) for buf. A socket file left
// at path by a ferry that did not stop cleanly is replaced: the caller holds
// the buffer's lock, so no other ferry can be serving it. Any other kind of
// file at path is an error.
func Listen(path string, buf *buffer.Buffer, log *slog.Logger) (*Server, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode().Type() != fs.ModeSocket {
			return nil, fmt.Errorf("admin socket %s: a %v file is in the way", path, fi.Mode().Type())
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("admin socket %s: remove stale socket: %w", path, err)
		}
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("admin socket: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("admin socket %s: %w", path, err)
	}
	return &Server{path: path, ln: ln, buf: buf, log: log}, nil
}

// SetStatus makes /v1/status answer with fn's value as JSON. Call it
// before Serve.
func (s *Server) SetStatus(fn func() any) { s.status = fn }

// Path returns the socket's path.
func (s *Server) Path() string { return s.path }

// Serve answers requests until ctx is done, then stops: requests in progress
// get up to two seconds to finish (their contexts are cancelled at once),
// and the socket file is removed. It returns nil after a stop caused by ctx.
func (s *Server) Serve(ctx context.Context) error {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/stats", s.stats)
	mux.HandleFunc("GET /v1/peek", s.peek)
	mux.HandleFunc("GET /v1/export", s.export)
	mux.HandleFunc("GET /v1/verify", s.verify)
	mux.HandleFunc("GET /v1/dlq", s.deadLetters)
	mux.HandleFunc("POST /v1/dlq/replay", s.replay)
	mux.HandleFunc("POST /v1/dlq/purge", s.purge)
	if s.status != nil {
		mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, s.status()) })
	}
	srv := &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 5 * time.Second,
		BaseContext:       func(net.Listener) context.Context { return ctx },
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(s.ln) }()
	var err error
	select {
	case <-ctx.Done():
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		if srv.Shutdown(sctx) != nil {
			srv.Close()
		}
		cancel()
		<-served
	case err = <-served: // the listener failed
	}
	if rerr := os.Remove(s.path); rerr != nil && !errors.Is(rerr, fs.ErrNotExist) {
		err = errors.Join(err, fmt.Errorf("admin socket: %w", rerr))
	}
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	return err
}

func (s *Server) fail(w http.ResponseWriter, r *http.Request, err error) {
	s.log.Warn("admin: request failed", "path", r.URL.Path, "err", err)
	http.Error(w, err.Error(), http.StatusInternalServerError)
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(v)
}

func (s *Server) stats(w http.ResponseWriter, r *http.Request) {
	info, err := s.buf.Info()
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, info)
}

func (s *Server) peek(w http.ResponseWriter, r *http.Request) {
	n := 10
	if q := r.URL.Query().Get("n"); q != "" {
		var err error
		if n, err = strconv.Atoi(q); err != nil || n < 0 || n > maxPeek {
			http.Error(w, fmt.Sprintf("n: want a number from 0 to %d, got %q", maxPeek, q), http.StatusBadRequest)
			return
		}
	}
	recs, err := s.buf.Peek(n)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	w.Header().Set("Content-Type", "application/jsonl")
	for _, rec := range recs {
		if err := buffer.WriteJSON(w, rec); err != nil {
			return // the client went away
		}
	}
}

func (s *Server) export(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/jsonl")
	w.Header().Set("Trailer", "Ferry-Skipped, Ferry-Error")
	ctx := r.Context()
	skipped, err := s.buf.Each(func(rec buffer.Record) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		return buffer.WriteJSON(w, rec)
	})
	w.Header().Set("Ferry-Skipped", strconv.FormatUint(skipped, 10))
	if err != nil {
		s.log.Warn("admin: export stopped", "err", err)
		w.Header().Set("Ferry-Error", err.Error())
	}
}

func (s *Server) verify(w http.ResponseWriter, r *http.Request) {
	rep, err := s.buf.Verify(r.Context())
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, rep)
}

// deadLetterFilter reads the reason and seq parameters.
func deadLetterFilter(r *http.Request) (buffer.DeadLetterFilter, error) {
	q := r.URL.Query()
	f := buffer.DeadLetterFilter{Reason: buffer.Reason(q.Get("reason"))}
	if s := q.Get("seq"); s != "" {
		n, err := strconv.ParseUint(s, 10, 64)
		if err != nil || n == 0 {
			return f, fmt.Errorf("seq: want a sequence number above 0, got %q", s)
		}
		f.Seq = n
	}
	return f, nil
}

// errLimit ends a listing at its limit.
var errLimit = errors.New("limit reached")

func (s *Server) deadLetters(w http.ResponseWriter, r *http.Request) {
	f, err := deadLetterFilter(r)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	limit := 0
	if q := r.URL.Query().Get("limit"); q != "" {
		if limit, err = strconv.Atoi(q); err != nil || limit < 0 {
			http.Error(w, fmt.Sprintf("limit: want 0 (no limit) or more, got %q", q), http.StatusBadRequest)
			return
		}
	}
	w.Header().Set("Content-Type", "application/jsonl")
	w.Header().Set("Trailer", "Ferry-Damaged, Ferry-Error")
	ctx := r.Context()
	n := 0
	damaged, err := s.buf.EachDeadLetter(f, func(e buffer.DeadLetterEntry) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		if limit > 0 && n == limit {
			return errLimit
		}
		n++
		return buffer.WriteDeadLetterJSON(w, e)
	})
	w.Header().Set("Ferry-Damaged", strconv.FormatUint(damaged, 10))
	if err != nil && !errors.Is(err, errLimit) {
		s.log.Warn("admin: dead-letter listing stopped", "err", err)
		w.Header().Set("Ferry-Error", err.Error())
	}
}

func (s *Server) replay(w http.ResponseWriter, r *http.Request) {
	f, err := deadLetterFilter(r)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	res, err := s.buf.ReplayDeadLetters(r.Context(), f)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	s.log.Info("admin: dead letters replayed", "reason", f.Reason, "seq", f.Seq, "replayed", res.Replayed,
		"first_seq", res.FirstSeq, "last_seq", res.LastSeq, "kept", res.Kept)
	writeJSON(w, res)
}

// PurgeResult is what POST /v1/dlq/purge answers.
type PurgeResult struct {
	Purged uint64 `json:"purged"` // records removed
}

func (s *Server) purge(w http.ResponseWriter, r *http.Request) {
	f, err := deadLetterFilter(r)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	n, err := s.buf.PurgeDeadLetters(r.Context(), f)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	s.log.Info("admin: dead letters purged", "reason", f.Reason, "seq", f.Seq, "purged", n)
	writeJSON(w, PurgeResult{Purged: n})
}
