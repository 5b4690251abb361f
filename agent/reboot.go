package agent

import (
	"context"
	"fmt"
)

// SystemRebooter reboots the machine (Linux reboot(2) after sync). It is
// only used by the real binary when asked to reboot; tests use fakes.
type SystemRebooter struct{}

// Reboot flushes filesystems and restarts the machine.
func (SystemRebooter) Reboot(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := reboot(); err != nil {
		return fmt.Errorf("reboot: %w", err)
	}
	return nil
}
