package testutil

import (
	"errors"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// Logger is a debug-level slog.Logger that writes through t.Log.
func Logger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// ChunkyReader hands out data in small odd pieces, as a network does.
type ChunkyReader struct{ R io.Reader }

func (c ChunkyReader) Read(p []byte) (int, error) { return c.R.Read(p[:min(len(p), 7777)]) }

// AssertNoTable checks with independent tools that path holds no partition
// table (sfdisk -l) and no signature at all (blkid -p exits 2: nothing
// found).
func AssertNoTable(t testing.TB, path string) {
	t.Helper()
	RequireCommand(t, "sfdisk", "blkid")
	out, errOut, _ := RunErr("sfdisk", "-l", path)
	if strings.Contains(out, "Disklabel type") {
		t.Errorf("sfdisk -l still finds a partition table:\n%s%s", out, errOut)
	}
	out, _, err := RunErr("blkid", "-p", path)
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 2 {
		t.Errorf("blkid -p %s: %v (want exit status 2, nothing found): %s", path, err, out)
	}
}

// ReadAt returns n bytes at off of a file or device; a short read fails t.
func ReadAt(t testing.TB, path string, off, n int64) []byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, n)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	return b
}
