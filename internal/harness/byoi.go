package harness

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

// Admin runs byoi-api's admin commands on a database.
type Admin struct {
	Bin, DB string
}

// Run runs `byoi-api ARGS --db DB --json` and decodes its output into v
// (nil: ignored).
func (a Admin) Run(ctx context.Context, v any, args ...string) error {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, a.Bin, append(args, "--db", a.DB, "--json")...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("byoi-api %s: %v: %s", strings.Join(args[:min(2, len(args))], " "), err, stderr.String())
	}
	if v == nil {
		return nil
	}
	return json.Unmarshal(stdout.Bytes(), v)
}

// NoAgentToken checks that no agent token (they all start byoi_ag_, and
// the kernel command line's byoi.token=) shows in any of the files (the
// consoles and byoi-api's log), and reports it.
func NoAgentToken(l *Log, files []string) bool {
	ok := true
	for _, f := range files {
		b, _ := os.ReadFile(f)
		if bytes.Contains(b, []byte("byoi_ag_")) || bytes.Contains(b, []byte("byoi.token=")) {
			l.Say("FAIL secrets: an agent token shows in %s", f)
			ok = false
		}
	}
	if ok {
		l.Say("PASS secrets: no agent token (byoi_ag_..., byoi.token=) in %d file(s): the consoles and byoi-api's log", len(files))
	}
	return ok
}

// MarkerUserData is a ConfigDrive user-data script that proves it ran: it
// prints "BYOI-MARKER <marker>" on the serial console and writes the marker
// to /root/byoi-marker.
func MarkerUserData(tool, marker string) string {
	return "#!/bin/sh\n# byoi " + tool + ": prove the ConfigDrive user data ran\n" +
		"printf 'BYOI-MARKER %s\\n' '" + marker + "' > /dev/ttyS0 2>/dev/null || true\n" +
		"printf 'BYOI-MARKER %s\\n' '" + marker + "' > /dev/console 2>/dev/null || true\n" +
		"printf '%s\\n' '" + marker + "' > /root/byoi-marker\n"
}

// ESPOffset is the byte offset of the EFI System Partition of a raw disk
// image (sgdisk -p, type EF00, 512-byte sectors).
func ESPOffset(ctx context.Context, raw string) (int64, error) {
	out, err := Output(ctx, time.Minute, "sgdisk", "-p", raw)
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(out, "\n") {
		f := strings.Fields(l)
		if len(f) >= 6 && f[5] == "EF00" {
			start, err := strconv.ParseInt(f[1], 10, 64)
			if err != nil {
				return 0, fmt.Errorf("sgdisk -p %s: %q", raw, l)
			}
			return start * 512, nil
		}
	}
	return 0, fmt.Errorf("no EFI System Partition in %s", raw)
}

// Mtools runs an mtools command (mdir, mdeltree, ...) without its
// geometry check.
func Mtools(ctx context.Context, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(os.Environ(), "MTOOLS_SKIP_CHECK=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// RandHex is n random bytes in hex.
func RandHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return fmt.Sprintf("%x", b)
}
