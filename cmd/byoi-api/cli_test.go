package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
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

// TestTokenAndCredentialCommands: token and credential list, revoke and
// expiry as an operator runs them; lists never show a secret; a database
// with data and no key file is refused (no new key is made).
func TestTokenAndCredentialCommands(t *testing.T) {
	db := filepath.Join(t.TempDir(), "byoi.db")
	run1 := func(args ...string) (int, string, string) {
		t.Helper()
		var out, errb bytes.Buffer
		code := run(context.Background(), append(args, "--db", db), &out, &errb)
		return code, out.String(), errb.String()
	}
	runOK := func(args ...string) string {
		t.Helper()
		code, out, errs := run1(args...)
		if code != 0 {
			t.Fatalf("%v: exit %d: %s", args, code, errs)
		}
		return out
	}
	runOK("customer", "add", "acme")
	var tok, tok2 map[string]string
	json.Unmarshal([]byte(runOK("token", "add", "--customer", "acme", "--json")), &tok)
	json.Unmarshal([]byte(runOK("token", "add", "--customer", "acme", "--expires", "1h", "--json")), &tok2)
	var cred map[string]string
	json.Unmarshal([]byte(runOK("credential", "add", "--customer", "acme", "--expires", "720h", "--json")), &cred)
	if tok["id"] == "" || tok2["id"] == "" || cred["credentialId"] == "" || cred["expires"] == "" {
		t.Fatalf("add: %v %v %v", tok, tok2, cred)
	}
	runOK("token", "revoke", tok["id"])
	var list []map[string]any
	out := runOK("token", "list", "--customer", "acme", "--json")
	if err := json.Unmarshal([]byte(out), &list); err != nil || len(list) != 2 {
		t.Fatalf("token list: %s %v", out, err)
	}
	status := map[string]string{}
	for _, s := range list {
		status[fmt.Sprint(s["id"])] = fmt.Sprint(s["status"])
	}
	if status[tok["id"]] != "revoked" || status[tok2["id"]] != "valid" {
		t.Fatalf("token list: %s", out)
	}
	runOK("credential", "revoke", cred["applicationKey"])
	out = runOK("credential", "list", "--customer", "acme")
	if !strings.Contains(out, "revoked") || strings.Contains(out, cred["applicationSecret"]) || strings.Contains(out, cred["consumerKey"]) || strings.Contains(runOK("token", "list"), tok2["accessToken"]) {
		t.Fatalf("credential list: %s", out)
	}
	for _, args := range [][]string{{"token", "revoke", "nope"}, {"token", "revoke", "999"}, {"credential", "revoke", "999"}, {"token", "add", "--customer", "acme", "--expires", "-1h"}} {
		if code, _, _ := run1(args...); code == 0 {
			t.Errorf("%v succeeded", args)
		}
	}
	if err := os.Remove(db + ".key"); err != nil {
		t.Fatal(err)
	}
	code, _, errs := run1("token", "list")
	if code == 0 || !strings.Contains(errs, "restore") {
		t.Fatalf("no key file: exit %d: %s", code, errs)
	}
	if _, err := os.Stat(db + ".key"); err == nil {
		t.Fatal("a new key file was made for a database with data")
	}
}
