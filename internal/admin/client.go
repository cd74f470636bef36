package admin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/ferry-edge/ferry/buffer"
)

// ErrNotServing is returned (wrapped) by a Client's methods when nothing
// answers on the socket: ferry is not running on that buffer, or it was
// killed and left its socket behind.
var ErrNotServing = errors.New("no ferry answers on the admin socket")

// Client talks to a running ferry's admin socket.
type Client struct {
	socket string
	hc     *http.Client
}

// NewClient returns a client of the socket at path. It does not connect
// yet.
func NewClient(path string) *Client {
	var d net.Dialer
	return &Client{
		socket: path,
		hc: &http.Client{Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				return d.DialContext(ctx, "unix", path)
			},
			DisableCompression: true,
		}},
	}
}

// Close releases idle connections.
func (c *Client) Close() error {
	c.hc.CloseIdleConnections()
	return nil
}

// get sends a GET for path and returns the response if its status is 200.
func (c *Client) get(ctx context.Context, path string) (*http.Response, error) {
	return c.do(ctx, http.MethodGet, path)
}

// do sends a request without a body and returns the response if its status
// is 200.
func (c *Client) do(ctx context.Context, method, path string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, method, "http://ferry"+path, nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		var op *net.OpError
		if errors.As(err, &op) && op.Op == "dial" {
			return nil, fmt.Errorf("%w %s: %v", ErrNotServing, c.socket, op.Err)
		}
		return nil, fmt.Errorf("admin socket %s: %w", c.socket, err)
	}
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		resp.Body.Close()
		return nil, fmt.Errorf("admin socket %s: %s: %s", c.socket, resp.Status, strings.TrimSpace(string(body)))
	}
	return resp, nil
}

func (c *Client) getJSON(ctx context.Context, path string, v any) error {
	resp, err := c.get(ctx, path)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		return fmt.Errorf("admin socket %s: %s: %w", c.socket, path, err)
	}
	return nil
}

// Info returns the running buffer's Info.
func (c *Client) Info(ctx context.Context) (buffer.Info, error) {
	var info buffer.Info
	err := c.getJSON(ctx, "/v1/stats", &info)
	return info, err
}

// Verify runs the running buffer's Verify.
func (c *Client) Verify(ctx context.Context) (buffer.VerifyReport, error) {
	var rep buffer.VerifyReport
	err := c.getJSON(ctx, "/v1/verify", &rep)
	return rep, err
}

// Peek returns the running buffer's next n records.
func (c *Client) Peek(ctx context.Context, n int) ([]buffer.Record, error) {
	resp, err := c.get(ctx, "/v1/peek?n="+strconv.Itoa(n))
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	recs := []buffer.Record{}
	dec := json.NewDecoder(resp.Body)
	for {
		var j buffer.JSONRecord
		if err := dec.Decode(&j); err == io.EOF {
			return recs, nil
		} else if err != nil {
			return recs, fmt.Errorf("admin socket %s: peek: %w", c.socket, err)
		}
		r, err := j.Record()
		if err != nil {
			return recs, fmt.Errorf("admin socket %s: peek: %w", c.socket, err)
		}
		recs = append(recs, r)
	}
}

// Export copies the running buffer's records to w in the export format
// (JSON lines, see buffer.JSONRecord). skipped counts records the server
// could not decode.
func (c *Client) Export(ctx context.Context, w io.Writer) (skipped uint64, err error) {
	resp, err := c.get(ctx, "/v1/export")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if _, err := io.Copy(w, resp.Body); err != nil {
		return 0, fmt.Errorf("admin socket %s: export: %w", c.socket, err)
	}
	// Trailers are set once the body has been read to the end.
	if msg := resp.Trailer.Get("Ferry-Error"); msg != "" {
		return 0, fmt.Errorf("admin socket %s: export stopped: %s", c.socket, msg)
	}
	s := resp.Trailer.Get("Ferry-Skipped")
	if skipped, err = strconv.ParseUint(s, 10, 64); err != nil {
		return 0, fmt.Errorf("admin socket %s: export ended without its trailer (ferry stopped?)", c.socket)
	}
	return skipped, nil
}

// deadLetterQuery is the query string selecting f's entries.
func deadLetterQuery(f buffer.DeadLetterFilter) url.Values {
	q := url.Values{}
	if f.Reason != "" {
		q.Set("reason", string(f.Reason))
	}
	if f.Seq != 0 {
		q.Set("seq", strconv.FormatUint(f.Seq, 10))
	}
	return q
}

// DeadLetters calls fn with the running buffer's dead-letter entries f
// selects, at most limit of them (0: all), in sequence order. damaged
// counts entries the server could not read.
func (c *Client) DeadLetters(ctx context.Context, f buffer.DeadLetterFilter, limit int, fn func(buffer.DeadLetterEntry) error) (damaged uint64, err error) {
	q := deadLetterQuery(f)
	if limit > 0 {
		q.Set("limit", strconv.Itoa(limit))
	}
	resp, err := c.get(ctx, "/v1/dlq?"+q.Encode())
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	dec := json.NewDecoder(resp.Body)
	for {
		var j buffer.JSONDeadLetter
		if err := dec.Decode(&j); err == io.EOF {
			break
		} else if err != nil {
			return 0, fmt.Errorf("admin socket %s: dead letters: %w", c.socket, err)
		}
		e, err := j.Entry()
		if err != nil {
			return 0, fmt.Errorf("admin socket %s: dead letters: %w", c.socket, err)
		}
		if err := fn(e); err != nil {
			return 0, err
		}
	}
	if msg := resp.Trailer.Get("Ferry-Error"); msg != "" {
		return 0, fmt.Errorf("admin socket %s: dead letters: stopped: %s", c.socket, msg)
	}
	s := resp.Trailer.Get("Ferry-Damaged")
	if damaged, err = strconv.ParseUint(s, 10, 64); err != nil {
		return 0, fmt.Errorf("admin socket %s: dead letters ended without their trailer (ferry stopped?)", c.socket)
	}
	return damaged, nil
}

// ReplayDeadLetters has the running buffer replay the dead letters f
// selects (see buffer.Buffer.ReplayDeadLetters).
func (c *Client) ReplayDeadLetters(ctx context.Context, f buffer.DeadLetterFilter) (buffer.ReplayResult, error) {
	var res buffer.ReplayResult
	err := c.postJSON(ctx, "/v1/dlq/replay?"+deadLetterQuery(f).Encode(), &res)
	return res, err
}

// PurgeDeadLetters has the running buffer purge the dead letters f
// selects and returns how many records it removed.
func (c *Client) PurgeDeadLetters(ctx context.Context, f buffer.DeadLetterFilter) (uint64, error) {
	var res PurgeResult
	err := c.postJSON(ctx, "/v1/dlq/purge?"+deadLetterQuery(f).Encode(), &res)
	return res.Purged, err
}

func (c *Client) postJSON(ctx context.Context, path string, v any) error {
	resp, err := c.do(ctx, http.MethodPost, path)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		return fmt.Errorf("admin socket %s: %s: %w", c.socket, path, err)
	}
	return nil
}

// Status decodes the running ferry's /v1/status into v.
func (c *Client) Status(ctx context.Context, v any) error {
	return c.getJSON(ctx, "/v1/status", v)
}
