package metrics

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Server is the monitoring endpoint on a TCP address.
type Server struct {
	ln  net.Listener
	srv *http.Server
}

// Listen binds addr (host:port) for m, which must be attached to a Source.
// Nothing is served before Serve.
//
//	/metrics  Prometheus text format
//	/healthz  200 "ok", or 503 and why the pipeline is stuck
//	/readyz   200 "ready" (and the Kafka error, if any: buffering is the
//	          job), or 503 and what is missing
func Listen(addr string, m *Metrics, log *slog.Logger) (*Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("admin.listen: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		// A metric that cannot be read (a /proc file hidden by the
		// sandbox, say) is left out; the rest are still served.
		ErrorHandling: promhttp.ContinueOnError,
	}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		if ok, why := m.src.Healthy(); !ok {
			http.Error(w, why, http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		if ok, why := m.src.Ready(); !ok {
			http.Error(w, why, http.StatusServiceUnavailable)
			return
		}
		if e := m.src.Snapshot().KafkaError; e != "" {
			fmt.Fprintf(w, "ready; Kafka: %s (records wait in the buffer)\n", e)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	return &Server{ln: ln, srv: &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 5 * time.Second,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}}, nil
}

// Addr is the address served, with the port chosen if addr had port 0.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// Serve answers requests until ctx is done, then gives requests in progress
// up to two seconds and returns nil.
func (s *Server) Serve(ctx context.Context) error {
	served := make(chan error, 1)
	go func() { served <- s.srv.Serve(s.ln) }()
	select {
	case <-ctx.Done():
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if s.srv.Shutdown(sctx) != nil {
			s.srv.Close()
		}
		<-served
		return nil
	case err := <-served:
		if errors.Is(err, http.ErrServerClosed) {
			return nil
		}
		return err
	}
}
