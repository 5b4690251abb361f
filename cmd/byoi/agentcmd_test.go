package main

import (
	"strings"
	"testing"
	"time"
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

// TestLocalInputsAreBounded: a job, user data or CA file that never ends
// (/dev/zero) is refused after a bounded read, not read until memory runs
// out.
func TestLocalInputsAreBounded(t *testing.T) {
	disk := sparse(t, 64<<20)
	for _, args := range [][]string{
		{"deploy", "--job", "/dev/zero", "--disk", disk},
		{"deploy", "--url", "http://127.0.0.1:1/x", "--type", "raw", "--user-data", "/dev/zero", "--disk", disk},
		{"deploy", "--url", "http://127.0.0.1:1/x", "--type", "raw", "--ca-cert", "/dev/zero", "--disk", disk},
		{"inspect", "--ca-cert", "/dev/zero", "http://127.0.0.1:1/x"},
	} {
		start := time.Now()
		code, _, errOut := runCLI(t, args...)
		if code == 0 || !strings.Contains(lastLine(errOut), "limit") {
			t.Errorf("%v: exit %d, %q", args, code, lastLine(errOut))
		}
		if el := time.Since(start); el > 10*time.Second {
			t.Errorf("%v took %s", args, el)
		}
	}
}
