// Package testutil decides whether a test can run (root, a command, a kernel
// feature) and manages loop devices for tests. In CI (CI=true or
// BYOI_REQUIRE_ALL=1) a missing requirement fails the test instead of
// skipping it, so nothing quietly stops being tested.
package testutil

import (
	"bytes"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Strict reports whether missing requirements are failures (CI).
func Strict() bool {
	return os.Getenv("CI") == "true" || os.Getenv("BYOI_REQUIRE_ALL") == "1"
}

// Unavailable skips the test with the reason, or fails it in CI.
func Unavailable(t testing.TB, format string, args ...any) {
	t.Helper()
	if Strict() {
		t.Fatalf("required in CI: "+format, args...)
	}
	t.Skipf(format, args...)
}

// RequireRoot skips (fails in CI) unless running as root.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		Unavailable(t, "needs root")
	}
}

// RequireCommand skips (fails in CI) unless every named command is on PATH
// (or in /sbin, /usr/sbin). It returns the resolved path of the first.
func RequireCommand(t testing.TB, names ...string) string {
	t.Helper()
	first := ""
	for _, n := range names {
		p, err := LookPath(n)
		if err != nil {
			Unavailable(t, "needs command %s (Debian: scripts/install-test-deps.sh)", n)
			return ""
		}
		if first == "" {
			first = p
		}
	}
	return first
}

// LookPath finds a command on PATH or in the sbin directories, which a
// non-login root shell may not have on PATH.
func LookPath(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, dir := range []string{"/usr/sbin", "/sbin", "/usr/bin", "/bin"} {
		p := dir + "/" + name
		if st, err := os.Stat(p); err == nil && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return exec.LookPath(name)
}

// Run runs a command and fails the test if it fails. It returns stdout.
func Run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, errOut, err := RunErr(name, args...)
	if err != nil {
		t.Fatalf("%s %s: %v\nstdout: %s\nstderr: %s", name, strings.Join(args, " "), err, out, errOut)
	}
	return out
}

// RunErr runs a command and returns stdout, stderr and the error.
func RunErr(name string, args ...string) (string, string, error) {
	p, err := LookPath(name)
	if err != nil {
		return "", "", err
	}
	cmd := exec.Command(p, args...)
	var so, se bytes.Buffer
	cmd.Stdout, cmd.Stderr = &so, &se
	err = cmd.Run()
	return so.String(), se.String(), err
}

// SparseFile creates a sparse file of the given size in a test temp dir.
func SparseFile(t testing.TB, size int64) string {
	t.Helper()
	p := t.TempDir() + "/disk.img"
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return p
}

// LoopDevice attaches file to a new loop device (sectorSize 0 = default
// 512) with partition scanning on, and detaches it in cleanup. It needs root
// and losetup; it skips (fails in CI) without them.
func LoopDevice(t testing.TB, file string, sectorSize int) string {
	t.Helper()
	RequireRoot(t)
	RequireCommand(t, "losetup")
	if _, err := os.Stat("/dev/loop-control"); err != nil {
		Unavailable(t, "needs loop devices: %v", err)
	}
	args := []string{"--find", "--show", "--partscan"}
	if sectorSize != 0 {
		args = append(args, "--sector-size", strconv.Itoa(sectorSize))
	}
	args = append(args, file)
	var dev string
	var lastErr error
	for i := 0; i < 10; i++ { // losetup races with other attachers: retry on EBUSY
		out, errOut, err := RunErr("losetup", args...)
		if err == nil {
			dev = strings.TrimSpace(out)
			break
		}
		lastErr = err
		if !strings.Contains(errOut, "busy") && !strings.Contains(errOut, "Resource temporarily") {
			t.Fatalf("losetup %v: %v: %s", args, err, errOut)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if dev == "" {
		t.Fatalf("losetup %v: %v", args, lastErr)
	}
	t.Cleanup(func() {
		for i := 0; i < 10; i++ {
			if _, _, err := RunErr("losetup", "--detach", dev); err == nil {
				return
			}
			time.Sleep(200 * time.Millisecond)
		}
		t.Errorf("could not detach %s", dev)
	})
	return dev
}
