package main

import (
	"fmt"
	"io"
	"strings"

	"github.com/ferry-edge/ferry/config"
	"github.com/ferry-edge/ferry/internal/topic"
)

// writeRoutes writes the effective routes, in the order they are tried,
// as YAML comments (the output stays the YAML it follows): what each
// matches and where it sends it, {gateway_id} filled in.
func writeRoutes(w io.Writer, cfg *config.Config) {
	gw := strings.NewReplacer("{"+topic.GatewayName+"}", cfg.GatewayID)
	fmt.Fprintln(w, "# Effective routes, tried in this order (the first that matches wins):")
	for i, r := range cfg.Forward.Routes {
		match := r.Match
		if r.Default {
			match = "(default: every topic)"
		}
		if r.Drop {
			fmt.Fprintf(w, "#   %d. %s -> dropped (counted as dropped, reason route)\n", i+1, match)
			continue
		}
		fmt.Fprintf(w, "#   %d. %s -> topic %s", i+1, match, gw.Replace(r.Topic))
		if r.Key != "" {
			fmt.Fprintf(w, ", key %s", gw.Replace(r.Key))
		} else {
			fmt.Fprint(w, ", no key (partitioned by MQTT topic)")
		}
		fmt.Fprintf(w, ", format %s", r.Format)
		for _, h := range r.Headers {
			fmt.Fprintf(w, ", header %s=%s", h.Name, gw.Replace(h.Value))
		}
		fmt.Fprintln(w)
	}
	if n := len(cfg.Forward.Routes); n == 0 || !cfg.Forward.Routes[n-1].Default {
		fmt.Fprintln(w, "#   Anything else is unrouted: dropped and counted (reason unrouted).")
	}
}
