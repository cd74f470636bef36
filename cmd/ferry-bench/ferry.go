package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/ferry-edge/ferry/internal/testenv"
)

// ferryPackage is what buildFerry builds.
const ferryPackage = "github.com/ferry-edge/ferry/cmd/ferry"

// buildFerry builds the ferry command of the module around the working
// directory into dir, as a release build would (CGO off, -trimpath), and
// returns the binary's path and where it came from: the module's
// directory and its git commit, so a report never hides which tree it
// measured.
func buildFerry(ctx context.Context, dir string) (bin, source string, err error) {
	out, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	gomod := strings.TrimSpace(string(out))
	if err != nil || gomod == "" || gomod == os.DevNull {
		return "", "", fmt.Errorf("build ferry: not inside a Go module (run inside the ferry repository, or pass -ferry PATH)")
	}
	src := filepath.Dir(gomod)
	bin = filepath.Join(dir, "ferry")
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-o", bin, ferryPackage)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", "", fmt.Errorf("build ferry in %s (go build %s; run inside the ferry repository, or pass -ferry PATH): %w\n%s", src, ferryPackage, err, out)
	}
	return bin, src + " at " + gitCommit(ctx, src), nil
}

// gitCommit describes the commit checked out in dir, "abc1234" or
// "abc1234 + uncommitted changes", or says it is unknown.
func gitCommit(ctx context.Context, dir string) string {
	head, err := exec.CommandContext(ctx, "git", "-C", dir, "rev-parse", "--short", "HEAD").Output()
	if err != nil {
		return "an unknown commit (no git)"
	}
	c := strings.TrimSpace(string(head))
	if st, err := exec.CommandContext(ctx, "git", "-C", dir, "status", "--porcelain", "--untracked-files=no").Output(); err == nil && len(bytes.TrimSpace(st)) > 0 {
		c += " + uncommitted changes"
	}
	return c
}

// ferryVersion returns the first line of `ferry version`.
func ferryVersion(bin string) string {
	out, err := exec.Command(bin, "version").Output()
	if err != nil {
		return "unknown (" + err.Error() + ")"
	}
	line, _, _ := strings.Cut(string(out), "\n")
	return line
}

// ferryConfig is how the benchmark configures ferry: the README's example
// (testenv.FerryConfig), the metrics endpoint on a free port, then the
// user's additions in order.
type ferryConfig struct {
	Extra []string // YAML documents merged into the file, in order
	Set   []string // key.path=value, applied after Extra
}

// write writes the configuration for broker b and Kafka k to path and
// returns the admin address ("" when the user turned it off).
func (fc ferryConfig) write(path string, b *testenv.Broker, k *testenv.Kafka, topic, bufferPath string) (string, error) {
	var doc map[string]any
	if err := yaml.Unmarshal([]byte(testenv.FerryConfig(b, k, topic, bufferPath)), &doc); err != nil {
		return "", fmt.Errorf("parse the base ferry config: %w", err)
	}
	port, err := freePort()
	if err != nil {
		return "", err
	}
	if err := setPath(doc, "admin.listen", fmt.Sprintf("127.0.0.1:%d", port)); err != nil {
		return "", err
	}
	for _, e := range fc.Extra {
		var extra map[string]any
		if err := yaml.Unmarshal([]byte(e), &extra); err != nil {
			return "", fmt.Errorf("-config-extra: %w", err)
		}
		merge(doc, extra)
	}
	for _, s := range fc.Set {
		key, val, ok := strings.Cut(s, "=")
		if !ok || key == "" {
			return "", fmt.Errorf("-set %q: want key.path=value", s)
		}
		var v any
		if err := yaml.Unmarshal([]byte(val), &v); err != nil {
			return "", fmt.Errorf("-set %q: value: %w", s, err)
		}
		if err := setPath(doc, key, v); err != nil {
			return "", fmt.Errorf("-set %q: %w", s, err)
		}
	}
	out, err := yaml.Marshal(doc)
	if err != nil {
		return "", fmt.Errorf("encode ferry config: %w", err)
	}
	if err := os.WriteFile(path, out, 0o600); err != nil {
		return "", fmt.Errorf("write ferry config: %w", err)
	}
	admin, _ := getPath(doc, "admin.listen").(string)
	return admin, nil
}

// setPath sets doc's value at a dotted key path, creating maps on the way.
func setPath(doc map[string]any, path string, v any) error {
	keys := strings.Split(path, ".")
	m := doc
	for i, k := range keys[:len(keys)-1] {
		next, ok := m[k]
		if !ok || next == nil {
			nm := map[string]any{}
			m[k] = nm
			m = nm
			continue
		}
		nm, ok := next.(map[string]any)
		if !ok {
			return fmt.Errorf("%s is not a mapping", strings.Join(keys[:i+1], "."))
		}
		m = nm
	}
	m[keys[len(keys)-1]] = v
	return nil
}

// getPath returns doc's value at a dotted key path, or nil.
func getPath(doc map[string]any, path string) any {
	var v any = doc
	for _, k := range strings.Split(path, ".") {
		m, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = m[k]
	}
	return v
}

// merge merges src into dst: mappings key by key, anything else (lists
// included) replaced.
func merge(dst, src map[string]any) {
	for k, sv := range src {
		sm, sok := sv.(map[string]any)
		dm, dok := dst[k].(map[string]any)
		if sok && dok {
			merge(dm, sm)
			continue
		}
		dst[k] = sv
	}
}

// checkFerryConfig runs `ferry check -c path` and returns its complaint.
func checkFerryConfig(bin, path string) error {
	var stderr bytes.Buffer
	cmd := exec.Command(bin, "check", "-c", path)
	cmd.Stdout, cmd.Stderr = io.Discard, &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("ferry check -c %s: %w\n%s", path, err, strings.TrimSpace(stderr.String()))
	}
	return nil
}

// startFerry runs `ferry run -c configPath` and waits until it is ready:
// /readyz answers 200 (buffer open, subscriptions granted) or, without a
// metrics endpoint, its log says it subscribed.
func startFerry(ctx context.Context, bin, configPath, admin, logPath string, echo io.Writer) (*child, error) {
	c, err := startChild("ferry", []string{bin, "run", "-c", configPath}, nil, logPath, echo, func(line string) bool {
		return strings.Contains(line, "msg=subscribed") || strings.Contains(line, `"msg":"subscribed"`)
	})
	if err != nil {
		return nil, err
	}
	var poll func() bool
	if admin != "" {
		hc := &http.Client{Timeout: time.Second}
		poll = func() bool {
			resp, err := hc.Get("http://" + admin + "/readyz")
			if err != nil {
				return false
			}
			resp.Body.Close()
			return resp.StatusCode == http.StatusOK
		}
	}
	if err := c.waitReady(ctx, 60*time.Second, poll); err != nil {
		_ = c.stop(5 * time.Second)
		return nil, err
	}
	return c, nil
}

// scrapeMetrics fetches ferry's /metrics and returns each sample's value
// summed over its labels, by metric name.
func scrapeMetrics(admin string) (map[string]float64, error) {
	if admin == "" {
		return nil, errors.New("no metrics endpoint (admin.listen is empty)")
	}
	hc := &http.Client{Timeout: 5 * time.Second}
	resp, err := hc.Get("http://" + admin + "/metrics")
	if err != nil {
		return nil, fmt.Errorf("scrape ferry metrics: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("scrape ferry metrics: %s", resp.Status)
	}
	m := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		name, rest := line, ""
		if i := strings.IndexAny(line, "{ "); i >= 0 {
			name, rest = line[:i], line[i:]
		}
		if j := strings.LastIndexByte(rest, '}'); j >= 0 {
			rest = rest[j+1:]
		}
		f := strings.Fields(rest)
		if len(f) == 0 {
			continue
		}
		v, err := strconv.ParseFloat(f[0], 64)
		if err != nil {
			continue
		}
		m[name] += v
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("scrape ferry metrics: %w", err)
	}
	return m, nil
}

// freePort asks the kernel for a free port on 127.0.0.1 and releases it.
func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}
