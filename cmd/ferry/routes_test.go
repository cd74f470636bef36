package main

import (
	"strings"
	"testing"

	"github.com/ferry-edge/ferry/config"
)

// The route table ferry check prints: every kind of route, in order, with
// {gateway_id} filled in; "anything else is unrouted" only without a
// default route.
func TestWriteRoutes(t *testing.T) {
	cfg := &config.Config{GatewayID: "gw-9"}
	cfg.Forward.Routes = []config.Route{
		{Match: "sensors/debug/#", Drop: true},
		{Match: "sensors/{device}/#", Topic: "t.{device}", Key: "{gateway_id}/{device}", Format: config.FormatEnvelope,
			Headers: config.RouteHeaders{{Name: "site", Value: "hall-3"}, {Name: "rest", Value: "{#}"}}},
		{Match: "plant/+", Topic: "plant.{gateway_id}", Format: config.FormatRaw},
	}
	var b strings.Builder
	writeRoutes(&b, cfg)
	want := `# Effective routes, tried in this order (the first that matches wins):
#   1. sensors/debug/# -> dropped (counted as dropped, reason route)
#   2. sensors/{device}/# -> topic t.{device}, key gw-9/{device}, format envelope, header site=hall-3, header rest={#}
#   3. plant/+ -> topic plant.gw-9, no key (partitioned by MQTT topic), format raw
#   Anything else is unrouted: dropped and counted (reason unrouted).
`
	if b.String() != want {
		t.Errorf("got:\n%swant:\n%s", b.String(), want)
	}
	cfg.Forward.Routes = append(cfg.Forward.Routes, config.Route{Default: true, Topic: "rest", Format: config.FormatRaw})
	b.Reset()
	writeRoutes(&b, cfg)
	if got := b.String(); !strings.Contains(got, "#   4. (default: every topic) -> topic rest") || strings.Contains(got, "unrouted") {
		t.Errorf("with a default route:\n%s", got)
	}
}
