package main

import (
	"runtime"
	"runtime/debug"
	"testing"
)

func TestRuntimeDefaults(t *testing.T) {
	was := runtime.GOMAXPROCS(0)
	t.Cleanup(func() { runtime.GOMAXPROCS(was) })
	wasGC := debug.SetGCPercent(100) // as the runtime starts without GOGC
	t.Cleanup(func() { debug.SetGCPercent(wasGC) })

	runtime.GOMAXPROCS(3)
	runtimeDefaults(func(string) string { return "" })
	if got := runtime.GOMAXPROCS(0); got != defaultMaxProcs {
		t.Errorf("without GOMAXPROCS in the environment: GOMAXPROCS %d, want ferry's default %d", got, defaultMaxProcs)
	}
	if got := gcPercent(); got != defaultGCPercent {
		t.Errorf("without GOGC in the environment: GOGC %d, want ferry's default %d", got, defaultGCPercent)
	}

	runtime.GOMAXPROCS(3)   // as the runtime set it from GOMAXPROCS=3
	debug.SetGCPercent(200) // and from GOGC=200
	env := map[string]string{"GOMAXPROCS": "3", "GOGC": "200"}
	runtimeDefaults(func(k string) string { return env[k] })
	if got := runtime.GOMAXPROCS(0); got != 3 {
		t.Errorf("with GOMAXPROCS=3 in the environment: GOMAXPROCS %d, want it left at 3", got)
	}
	if got := gcPercent(); got != 200 {
		t.Errorf("with GOGC=200 in the environment: GOGC %d, want it left at 200", got)
	}
}
