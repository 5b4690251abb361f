package harness

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// GoBuild builds a package of the repository into out (static:
// CGO_ENABLED=0), its output in logPath.
func GoBuild(ctx context.Context, repo, pkg, out, logPath string) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, pkg)
	cmd.Dir = repo
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	b, err := cmd.CombinedOutput()
	os.WriteFile(logPath, b, 0o644)
	if err != nil {
		return fmt.Errorf("go build %s: %w:\n%s", pkg, err, TailLines(string(b), 20))
	}
	return nil
}

// Script runs one of the repository's build scripts (scripts/NAME with
// args), its stderr in logPath, and returns the last n lines of its stdout
// (the paths it printed).
func Script(ctx context.Context, repo, name, logPath string, n int, args ...string) ([]string, error) {
	ctx, cancel := context.WithTimeout(ctx, 40*time.Minute)
	defer cancel()
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	cmd := exec.CommandContext(ctx, filepath.Join(repo, "scripts", name), args...)
	cmd.Dir = repo
	cmd.Stderr = logf
	cmd.SysProcAttr = procAttr()
	b, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("scripts/%s: %w:\n%s", name, err, TailFile(logPath, 20))
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) < n {
		return nil, fmt.Errorf("scripts/%s printed %d lines, want %d:\n%s", name, len(lines), n, TailFile(logPath, 20))
	}
	lines = lines[len(lines)-n:]
	for _, l := range lines {
		if st, err := os.Stat(l); err != nil || st.Size() == 0 {
			return nil, fmt.Errorf("scripts/%s: %q is not a file:\n%s", name, l, TailFile(logPath, 20))
		}
	}
	return lines, nil
}

// TestImage is the Debian test image (scripts/build-test-image.sh, cached
// under /var/cache) of a variant ("" the default one).
func TestImage(ctx context.Context, repo, logPath string) (string, error) {
	l, err := Script(ctx, repo, "build-test-image.sh", logPath, 1)
	if err != nil {
		return "", err
	}
	return l[0], nil
}

// Rescue is the rescue system's directory (scripts/build-rescue.sh,
// cached): it holds vmlinuz, initrd.img and manifest.txt.
func Rescue(ctx context.Context, repo, logPath string) (string, error) {
	l, err := Script(ctx, repo, "build-rescue.sh", logPath, 2)
	if err != nil {
		return "", err
	}
	return filepath.Dir(l[0]), nil
}

// Cached makes out from src with make, once: out is rebuilt only when
// missing or older than src, under an exclusive lock on lockPath (other
// checks may want it at the same time), and written to out.tmp first.
func Cached(lockPath, src, out string, make func(tmp string) error) error {
	lf, err := os.OpenFile(lockPath, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return err
	}
	defer lf.Close()
	if err := unix.Flock(int(lf.Fd()), unix.LOCK_EX); err != nil {
		return err
	}
	defer unix.Flock(int(lf.Fd()), unix.LOCK_UN)
	so, err := os.Stat(out)
	ss, serr := os.Stat(src)
	if serr != nil {
		return serr
	}
	if err == nil && so.Size() > 0 && !ss.ModTime().After(so.ModTime()) {
		return nil
	}
	tmp := out + ".tmp"
	os.Remove(tmp)
	if err := make(tmp); err != nil {
		os.Remove(tmp)
		return err
	}
	return os.Rename(tmp, out)
}
