package harness

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"
)

var ansiRE = regexp.MustCompile(`\x1b\[[0-9;?=]*[a-zA-Z]|\x1b[()][0-9A-Za-z]|\x1b[=>c]`)

// CleanConsole makes a serial console readable line by line: escape
// sequences out, and of the pieces of a line rewritten with \r (progress
// bars) only the last one.
func CleanConsole(b []byte) string {
	s := ansiRE.ReplaceAllString(string(b), "")
	lines := strings.Split(s, "\n")
	for i, l := range lines {
		l = strings.TrimRight(l, "\r")
		if j := strings.LastIndexByte(l, '\r'); j >= 0 {
			l = l[j+1:]
		}
		lines[i] = l
	}
	return strings.Join(lines, "\n")
}

// Searchable is a console file from byte off on: escape sequences out, \r
// as a line end (iPXE and progress bars rewrite lines), so that every
// piece of a rewritten line can be matched.
func Searchable(path string, off int64) string {
	b, _ := os.ReadFile(path)
	if off > int64(len(b)) {
		off = int64(len(b))
	}
	s := ansiRE.ReplaceAllString(string(b[off:]), "")
	return strings.ReplaceAll(s, "\r", "\n")
}

// ReadConsole is a log or console file made readable (CleanConsole); ""
// when it cannot be read.
func ReadConsole(path string) string {
	b, _ := os.ReadFile(path)
	return CleanConsole(b)
}

// TailFile is the last n non-empty lines of a console or log, indented
// for a report.
func TailFile(path string, n int) string { return TailLines(ReadConsole(path), n) }

// TailLines is the last n non-empty lines of s, each cut at 220 bytes and
// indented with "    | ".
func TailLines(s string, n int) string {
	var keep []string
	for _, l := range strings.Split(s, "\n") {
		if strings.TrimSpace(l) != "" {
			keep = append(keep, l)
		}
	}
	if len(keep) > n {
		keep = keep[len(keep)-n:]
	}
	for i := range keep {
		if len(keep[i]) > 220 {
			keep[i] = keep[i][:220] + "..."
		}
		keep[i] = "    | " + keep[i]
	}
	return strings.Join(keep, "\n")
}

// GrepTail is TailFile of the lines re matches.
func GrepTail(path string, re *regexp.Regexp, n int) string {
	var keep []string
	for _, l := range strings.Split(ReadConsole(path), "\n") {
		if re.MatchString(l) {
			keep = append(keep, l)
		}
	}
	if len(keep) == 0 {
		return "    | (none)"
	}
	return TailLines(strings.Join(keep, "\n"), n)
}

// WatchdogDump is the agent's last goroutine dump on a console (its
// watchdog's, from its first marker line to its last; at most 80 lines),
// or "".
func WatchdogDump(path string) string {
	s := ReadConsole(path)
	i := strings.LastIndex(s, "byoi watchdog: no progress")
	if i < 0 {
		return ""
	}
	s = s[i:]
	if j := strings.Index(s, "byoi watchdog: end of the goroutine dump"); j >= 0 {
		s = s[:j]
	}
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > 80 {
		lines = append(lines[:80], "...")
	}
	return TailLines(strings.Join(lines, "\n"), 81)
}

// LineOf is the whole line of s holding m (cut at 240 bytes).
func LineOf(s, m string) string {
	i := strings.Index(s, m)
	if i < 0 {
		return ""
	}
	start := strings.LastIndexByte(s[:i], '\n') + 1
	end := strings.IndexByte(s[i:], '\n')
	if end < 0 {
		end = len(s) - i
	}
	l := strings.TrimSpace(s[start : i+end])
	if len(l) > 240 {
		l = l[:240] + "..."
	}
	return l
}

// FileSize is a file's size now (0 when it does not exist): a mark for
// waits on what is written after it.
func FileSize(p string) int64 {
	st, err := os.Stat(p)
	if err != nil {
		return 0
	}
	return st.Size()
}

// Sleep waits for d or until ctx ends.
func Sleep(ctx context.Context, d time.Duration) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(d):
		return nil
	}
}

// WaitFile waits until re matches in the file after byte off, for at most
// limit, and returns the match.
func WaitFile(ctx context.Context, path string, off int64, re *regexp.Regexp, limit time.Duration) (string, error) {
	deadline := time.Now().Add(limit)
	for {
		b, _ := os.ReadFile(path)
		if off > int64(len(b)) {
			off = int64(len(b))
		}
		if m := re.Find(b[off:]); m != nil {
			return string(m), nil
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("/%s/ not in %s after %s", re, filepath.Base(path), limit)
		}
		if err := Sleep(ctx, time.Second); err != nil {
			return "", err
		}
	}
}
