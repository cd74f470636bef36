package main

import (
	"runtime"
	"testing"
)

func TestRuntimeDefaults(t *testing.T) {
	was := runtime.GOMAXPROCS(0)
	t.Cleanup(func() { runtime.GOMAXPROCS(was) })

	runtime.GOMAXPROCS(3)
	runtimeDefaults(func(string) string { return "" })
	if got := runtime.GOMAXPROCS(0); got != defaultMaxProcs {
		t.Errorf("without GOMAXPROCS in the environment: GOMAXPROCS %d, want ferry's default %d", got, defaultMaxProcs)
	}

	runtime.GOMAXPROCS(3) // as the runtime set it from GOMAXPROCS=3
	env := map[string]string{"GOMAXPROCS": "3"}
	runtimeDefaults(func(k string) string { return env[k] })
	if got := runtime.GOMAXPROCS(0); got != 3 {
		t.Errorf("with GOMAXPROCS=3 in the environment: GOMAXPROCS %d, want it left at 3", got)
	}
}
