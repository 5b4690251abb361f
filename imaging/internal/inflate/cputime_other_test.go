//go:build !linux

package inflate

import "time"

// threadCPU falls back to the wall clock.
func threadCPU() time.Duration { return time.Duration(time.Now().UnixNano()) }
