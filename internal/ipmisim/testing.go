package ipmisim

import (
	"context"
	"testing"
	"time"

	"github.com/byoi/byoi/internal/testutil"
)

// Start starts a simulator for a test and stops it in cleanup. Without
// ipmi_sim the test skips with the reason (fails in CI, through
// internal/testutil).
func Start(t testing.TB, cfg Config) *Sim {
	t.Helper()
	if cfg.Program == "" {
		if _, err := LookProgram(); err != nil {
			testutil.Unavailable(t, "%v", err)
		}
	}
	if cfg.Dir == "" {
		cfg.Dir = t.TempDir()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := New(ctx, cfg)
	if err != nil {
		t.Fatalf("ipmi_sim: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("stop ipmi_sim: %v", err)
		}
	})
	return s
}

// RequireIpmitool skips (fails in CI) without ipmitool, the judge.
func RequireIpmitool(t testing.TB) {
	t.Helper()
	testutil.RequireCommand(t, "ipmitool")
}
