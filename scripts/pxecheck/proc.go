package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"syscall"
	"time"
)

// proc is a background process whose output goes to a file. It dies with
// this program (PR_SET_PDEATHSIG), so no QEMU outlives a killed check.
type proc struct {
	cmd  *exec.Cmd
	done chan struct{}
	err  error
}

func startProc(name, logPath string, args ...string) (*proc, error) {
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = procAttr()
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, err
	}
	p := &proc{cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		f.Close()
		close(p.done)
	}()
	return p, nil
}

func (p *proc) running() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// stop ends the process: SIGTERM, then SIGKILL after 5 s.
func (p *proc) stop() {
	if !p.running() {
		return
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
		p.cmd.Process.Kill()
		<-p.done
	}
}

func runCmd(ctx context.Context, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	return string(out), err
}

// adminJSON runs a byoi-api admin command with --json.
func adminJSON(ctx context.Context, bin string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, bin, append(args, "--json")...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("byoi-api %s: %v: %s", strings.Join(args[:2], " "), err, stderr.String())
	}
	return stdout.String(), nil
}

func adminInto(ctx context.Context, bin string, v any, args ...string) error {
	out, err := adminJSON(ctx, bin, args...)
	if err != nil {
		return err
	}
	return json.Unmarshal([]byte(out), v)
}

func sha256File(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// readConsole is a log or console file made readable (cleanConsole); ""
// when it cannot be read.
func readConsole(path string) string {
	b, _ := os.ReadFile(path)
	return cleanConsole(b)
}

func tailFile(path string, n int) string {
	return tailLines(readConsole(path), n)
}

// watchdogDump is the agent's last goroutine dump on a console (its
// watchdog's, from its first marker line to its last; at most 80 lines),
// or "".
func watchdogDump(path string) string {
	s := readConsole(path)
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
	return tailLines(strings.Join(lines, "\n"), 81)
}

// grepTail is tailFile of the lines re matches.
func grepTail(path string, re *regexp.Regexp, n int) string {
	var keep []string
	for _, l := range strings.Split(readConsole(path), "\n") {
		if re.MatchString(l) {
			keep = append(keep, l)
		}
	}
	if len(keep) == 0 {
		return "    | (none)"
	}
	return tailLines(strings.Join(keep, "\n"), n)
}

func tailLines(s string, n int) string {
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

var ansiRE = regexp.MustCompile(`\x1b\[[0-9;?=]*[a-zA-Z]|\x1b[()][0-9A-Za-z]|\x1b[=>c]`)

// cleanConsole makes a serial console readable line by line: escape
// sequences out, and of the pieces of a line rewritten with \r (progress
// bars) only the last one.
func cleanConsole(b []byte) string {
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
