package main

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"os/signal"
	"reflect"
	"slices"
	"strings"
	"syscall"

	"github.com/coreos/go-systemd/v22/daemon"
	"gopkg.in/yaml.v3"

	"github.com/ferry-edge/ferry/config"
)

// live is what a reload changes in the running agent (*agent.Agent).
type live interface {
	SetRoutes(*config.Config) error
	SetLimits(*config.Config)
	Ready() (bool, string)
}

// reloadOnHUP re-reads the configuration file at path on every SIGHUP
// (systemctl reload ferry) until ctx is done or stop is called. What can
// change live changes: log.level; forward.routes (records read from the
// buffer from then on follow the new routes; nothing is dropped or
// reordered); and the buffer's max_bytes, max_age and
// max_dead_letter_bytes (applied at the next commit). Any other change
// needs a restart: it is refused with a log line naming each key, and the
// running configuration stays, as it does when the file is invalid (the
// log says why, with file:line:column). stop returns once SIGHUP is no
// longer handled.
func reloadOnHUP(ctx context.Context, path string, running *config.Config, level *slog.LevelVar, agent live, log *slog.Logger) (stop func()) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		// Ignore also undoes Notify, with no moment in between when
		// SIGHUP's default action (exit) applies: the clean stop goes on.
		defer signal.Ignore(syscall.SIGHUP)
		cur := *running
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
				// RELOADING=1 ... READY=1 frames the reload for systemd,
				// but only once ferry was ready: READY=1 must not come
				// before the buffer is open and the subscriptions granted.
				ready, _ := agent.Ready()
				if ready {
					daemon.SdNotify(false, "RELOADING=1")
				}
				cur = reload(path, cur, level, agent, log)
				if ready {
					daemon.SdNotify(false, "READY=1")
				}
			}
		}
	}()
	return func() { cancel(); <-done }
}

// reload applies what it can of the file at path to cur and returns the
// configuration now in force.
func reload(path string, cur config.Config, level *slog.LevelVar, agent live, log *slog.Logger) config.Config {
	next, err := config.LoadAndCheck(path) // a file it names that went unreadable is said now, not at the next restart
	if err != nil {
		log.Error("reload: invalid configuration; the running one stays", "err", strings.ReplaceAll(err.Error(), "\n", "; "))
		return cur
	}
	if changed := restartKeys(&cur, next); len(changed) > 0 {
		log.Error("reload: refused; these keys change only with a restart (systemctl restart ferry); the running configuration stays",
			"keys", strings.Join(changed, ","))
		return cur
	}
	changed := false
	if !reflect.DeepEqual(next.Forward.Routes, cur.Forward.Routes) {
		if err := agent.SetRoutes(next); err != nil {
			log.Error("reload: the new routes were refused; the running configuration stays", "err", err)
			return cur
		}
		for _, w := range next.Warnings {
			log.Warn("reload: configuration warning", "warning", w)
		}
		log.Info("reload: routes changed; records read from now on follow them", "routes", len(next.Forward.Routes))
		cur.Forward.Routes = next.Forward.Routes
		changed = true
	}
	if b, n := cur.Buffer, next.Buffer; b.MaxBytes != n.MaxBytes || b.MaxAge != n.MaxAge || b.MaxDeadLetterBytes != n.MaxDeadLetterBytes {
		agent.SetLimits(next)
		log.Info("reload: buffer limits changed; the next commit applies them",
			"max_bytes", n.MaxBytes, "max_age", n.MaxAge, "max_dead_letter_bytes", n.MaxDeadLetterBytes)
		cur.Buffer.MaxBytes, cur.Buffer.MaxAge, cur.Buffer.MaxDeadLetterBytes = n.MaxBytes, n.MaxAge, n.MaxDeadLetterBytes
		changed = true
	}
	if next.Log.Level != cur.Log.Level {
		var l slog.Level
		if err := l.UnmarshalText([]byte(next.Log.Level)); err == nil {
			level.Set(l)
		}
		log.Info("reload: log level changed", "from", cur.Log.Level, "to", next.Log.Level)
		cur.Log.Level = next.Log.Level
		changed = true
	}
	if !changed {
		log.Info("reload: configuration unchanged")
	}
	return cur
}

// restartKeys lists the keys, as dotted paths, in which next differs from
// cur other than those that change live (log.level, forward.routes, the
// buffer's max_bytes, max_age and max_dead_letter_bytes).
func restartKeys(cur, next *config.Config) []string {
	a, b := *cur, *next
	a.Log.Level, b.Log.Level = "", ""
	a.Forward.Routes, b.Forward.Routes = nil, nil
	a.Buffer.MaxBytes, b.Buffer.MaxBytes = 0, 0
	a.Buffer.MaxAge, b.Buffer.MaxAge = 0, 0
	a.Buffer.MaxDeadLetterBytes, b.Buffer.MaxDeadLetterBytes = 0, 0
	a.Warnings, b.Warnings = nil, nil
	if reflect.DeepEqual(a, b) {
		return nil
	}
	fa, fb := flatten(&a), flatten(&b)
	var keys []string
	for _, k := range slices.Sorted(maps.Keys(fa)) {
		if fa[k] != fb[k] {
			keys = append(keys, k)
		}
	}
	for k := range fb {
		if _, ok := fa[k]; !ok {
			keys = append(keys, k)
		}
	}
	if len(keys) == 0 {
		keys = []string{"a secret (password)"} // masked alike in both
	}
	slices.Sort(keys)
	return slices.Compact(keys)
}

// flatten maps each leaf of c's YAML form (secrets masked) to its value.
func flatten(c *config.Config) map[string]string {
	out := map[string]string{}
	data, err := yaml.Marshal(c)
	if err != nil {
		return out
	}
	var tree any
	if yaml.Unmarshal(data, &tree) != nil {
		return out
	}
	var walk func(prefix string, v any)
	walk = func(prefix string, v any) {
		switch v := v.(type) {
		case map[string]any:
			for k, x := range v {
				walk(strings.TrimPrefix(prefix+"."+k, "."), x)
			}
		case []any:
			for i, x := range v {
				walk(fmt.Sprintf("%s[%d]", prefix, i), x)
			}
		default:
			out[prefix] = fmt.Sprint(v)
		}
	}
	walk("", tree)
	return out
}
