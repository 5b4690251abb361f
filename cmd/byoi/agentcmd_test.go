package main

import (
	"strings"
	"testing"
)

// TestAgentSettingsOrder: flags win over the environment, which wins over
// the kernel command line (the PXE path).
func TestAgentSettingsOrder(t *testing.T) {
	cmdline := parseCmdline(`BOOT_IMAGE=/vmlinuz console=ttyS0 byoi.url=http://10.0.2.2:8080 byoi.server=srv1 byoi.token="tok-cmdline" quiet`)
	env := map[string]string{"BYOI_SERVER": "srv-env"}
	s := agentSettings{token: "tok-flag"}
	s.fill(func(k string) string { return env[k] }, cmdline)
	if s.url != "http://10.0.2.2:8080" || s.server != "srv-env" || s.token != "tok-flag" || s.caCert != "" {
		t.Errorf("settings %+v", s)
	}
}

// TestAgentNeedsSettings: without a control plane the agent says what it
// needs (and where it looks), exit 2.
func TestAgentNeedsSettings(t *testing.T) {
	code, _, errOut := runCLI(t, "agent", "--cmdline", "/dev/null")
	if code != 2 || !strings.Contains(errOut, "byoi.url=") {
		t.Errorf("exit %d: %s", code, errOut)
	}
}
