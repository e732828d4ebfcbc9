//go:build !linux

package main

import "time"

// processCPU is not measured here: adaptProcs then never sees load and
// keeps one processor, so runRun starts it on Linux only.
func processCPU() time.Duration { return 0 }
