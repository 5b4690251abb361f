package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestServerBMC: server add --bmc and server bmc take the password from a
// file, a variable or stdin, never print it, and refuse it in the URL.
func TestServerBMC(t *testing.T) {
	dir := t.TempDir()
	db := filepath.Join(dir, "byoi.db")
	const pw = "Pw-0f-the-BMC"
	pwFile := filepath.Join(dir, "bmc.pw")
	os.WriteFile(pwFile, []byte(pw+"\n"), 0o600)
	t.Setenv("BYOI_TEST_BMC_PW", pw)
	do := func(in string, args ...string) (int, string) {
		t.Helper()
		stdin = strings.NewReader(in)
		var out, errb bytes.Buffer
		code := run(context.Background(), append(args, "--db", db), &out, &errb)
		all := out.String() + errb.String()
		if strings.Contains(all, pw) {
			t.Errorf("%v printed the password", args)
		}
		return code, all
	}
	if code, out := do("", "customer", "add", "acme"); code != 0 {
		t.Fatal(out)
	}
	if code, out := do("", "server", "add", "ns1", "--customer", "acme", "--bmc", "ipmi://admin@10.0.0.5", "--password-file", pwFile); code != 0 || !strings.Contains(out, "ipmi://admin@10.0.0.5:623") {
		t.Fatalf("%d %s", code, out)
	}
	if code, out := do("", "server", "bmc", "ns1"); code != 0 || !strings.Contains(out, "bmc ipmi://admin@10.0.0.5:623") {
		t.Fatalf("%d %s", code, out)
	}
	if code, out := do("", "server", "bmc", "ns1", "--bmc", "ipmi://root@bmc1:6230", "--password-env", "BYOI_TEST_BMC_PW"); code != 0 || !strings.Contains(out, "ipmi://root@bmc1:6230") {
		t.Fatalf("%d %s", code, out)
	}
	if code, out := do(pw+"\n", "server", "bmc", "ns1", "--bmc", "ipmi://root@bmc2"); code != 0 || !strings.Contains(out, "ipmi://root@bmc2:623") {
		t.Fatalf("stdin: %d %s", code, out)
	}
	if code, out := do("", "server", "bmc", "ns1", "--bmc", "none"); code != 0 || !strings.Contains(out, "bmc none") {
		t.Fatalf("%d %s", code, out)
	}
	for _, args := range [][]string{
		{"server", "bmc", "ns1", "--bmc", "ipmi://admin:" + pw + "@10.0.0.5"},                // password in the URL
		{"server", "bmc", "ns1", "--bmc", "ipmi://admin@10.0.0.5", "--password-env", "NOPE"}, // unset variable
		{"server", "bmc", "ns1", "--bmc", "ipmi://admin@10.0.0.5", "--password-file", pwFile, "--password-env", "BYOI_TEST_BMC_PW"},
		{"server", "bmc", "ns1", "--bmc", "none", "--password-file", pwFile},
		{"server", "bmc", "nope", "--bmc", "ipmi://admin@10.0.0.5", "--password-file", pwFile},
		{"server", "bmc", "ns1", "--bmc", "redfish://admin@10.0.0.5"},
	} {
		if code, out := do("", args...); code == 0 {
			t.Errorf("%v accepted: %s", args, out)
		}
	}
	// Stdin empty: refused.
	if code, _ := do("", "server", "bmc", "ns1", "--bmc", "ipmi://admin@10.0.0.5"); code == 0 {
		t.Error("an empty password was accepted")
	}
}
