package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestAdminCommands runs the admin commands as an operator would, on a
// temporary database: secrets come out once, as JSON, and the key file is
// created 0600 beside the database.
func TestAdminCommands(t *testing.T) {
	db := filepath.Join(t.TempDir(), "byoi.db")
	runOK := func(args ...string) string {
		t.Helper()
		var out, errb bytes.Buffer
		if code := run(context.Background(), append(args, "--db", db), &out, &errb); code != 0 {
			t.Fatalf("%v: exit %d: %s", args, code, errb.String())
		}
		return out.String()
	}
	runOK("customer", "add", "acme")
	var cred map[string]string
	if err := json.Unmarshal([]byte(runOK("credential", "add", "--customer", "acme", "--json")), &cred); err != nil || len(cred["applicationKey"]) != 16 || len(cred["applicationSecret"]) != 32 || len(cred["consumerKey"]) != 32 {
		t.Fatalf("credential %v %v", cred, err)
	}
	var tok map[string]string
	if err := json.Unmarshal([]byte(runOK("token", "add", "--customer", "acme", "--json")), &tok); err != nil || !strings.HasPrefix(tok["accessToken"], "byoi_at_") {
		t.Fatalf("token %v %v", tok, err)
	}
	var sv map[string]string
	if err := json.Unmarshal([]byte(runOK("server", "add", "ns1.example", "--customer", "acme", "--mac", "52:54:00:12:34:56", "--json")), &sv); err != nil || sv["server"] != "ns1.example" || !strings.HasPrefix(sv["agentToken"], "byoi_ag_") {
		t.Fatalf("server %v %v", sv, err)
	}
	var sv2 map[string]string
	json.Unmarshal([]byte(runOK("server", "token", "ns1.example", "--json")), &sv2)
	if sv2["agentToken"] == "" || sv2["agentToken"] == sv["agentToken"] {
		t.Fatalf("server token %v", sv2)
	}
	st, err := os.Stat(db + ".key")
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("key file: %v %v", st, err)
	}
	for _, args := range [][]string{
		{"customer", "add", "acme"},                                   // exists
		{"server", "add", "bad/name", "--customer", "acme"},           // name
		{"server", "add", "ns2", "--customer", "nobody"},              // customer
		{"server", "add", "ns3", "--customer", "acme", "--mac", "zz"}, // MAC
		{"credential", "add", "--customer", "nobody"},
		{"nonsense"},
	} {
		var out, errb bytes.Buffer
		if code := run(context.Background(), append(args, "--db", db), &out, &errb); code == 0 {
			t.Errorf("%v succeeded", args)
		}
	}
	// a key file readable by others is refused
	os.Chmod(db+".key", 0o644)
	var out, errb bytes.Buffer
	if code := run(context.Background(), []string{"customer", "add", "x", "--db", db}, &out, &errb); code == 0 || !strings.Contains(errb.String(), "readable") {
		t.Errorf("world-readable key file accepted: %s", errb.String())
	}
}
