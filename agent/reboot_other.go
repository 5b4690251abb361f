//go:build !linux

package agent

import "errors"

func reboot() error { return errors.New("reboot is supported on Linux only") }
