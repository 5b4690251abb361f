package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"

	"github.com/byoi/byoi/agent"
	"github.com/byoi/byoi/imaging/fetch"
	"github.com/byoi/byoi/imaging/qcow2"
	"github.com/sirupsen/logrus"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

const usage = `byoi installs your own disk image on a server.

Usage:
  byoi deploy --job job.json --disk TARGET      deploy a job (either OVH shape) onto TARGET
  byoi deploy --url URL --type raw|qcow2 [--checksum SUM --checksum-type sha256] [--header 'Name: value'] --disk TARGET
  byoi deploy ... --disk-group N                 pick the first disk of disk group N instead of --disk
  byoi demo                                      deploy a built-in image onto ./byoi-demo-disk.img
  byoi agent --url URL --server NAME --token T   the rescue agent: pull jobs from byoi-api, deploy, report, reboot
  byoi inspect [--json] IMAGE|URL                  what an image holds and why it would not deploy or boot
  byoi disks [--json] [--all]                    list the disks and disk groups
  byoi drivers load|list                         load the kernel modules the devices need (rescue); list NICs and unclaimed devices
  byoi version

Run "byoi COMMAND -h" for the flags of a command.
`

// run is the whole command line: main only wires the process to it, so tests
// call it directly.
func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	setupLibraries()
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	var err error
	switch args[0] {
	case "deploy", "agent", "inspect":
		// Their first download needs the TLS roots: load them on the
		// other core meanwhile.
		fetch.PreloadRoots()
	}
	switch args[0] {
	case "deploy":
		err = cmdDeploy(ctx, args[1:], stdin, stdout, stderr)
	case "demo":
		err = cmdDemo(ctx, args[1:], stdout, stderr)
	case "agent":
		err = cmdAgent(ctx, args[1:], stdout, stderr)
	case "inspect":
		err = cmdInspect(ctx, args[1:], stdout, stderr)
	case "disks":
		err = cmdDisks(ctx, args[1:], stdout, stderr)
	case "drivers":
		err = cmdDrivers(ctx, args[1:], stdout, stderr)
	case "version", "--version":
		fmt.Fprintln(stdout, "byoi", version)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
	default:
		fmt.Fprintf(stderr, "byoi: unknown command %q\n\n%s", args[0], usage)
		return 2
	}
	if err == nil {
		return 0
	}
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	var ue usageError
	if errors.As(err, &ue) {
		fmt.Fprintf(stderr, "byoi %s: %s\n", args[0], ue.msg)
		return 2
	}
	// The user-facing message is the last line on stderr.
	fmt.Fprintln(stderr, oneLine(agent.Message(err)))
	return 1
}

type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error { return usageError{fmt.Sprintf(format, args...)} }

// setupLibraries silences go-diskfs's global logrus (it would print on
// stdout) and registers our qcow2 decompressors, once, before any work.
func setupLibraries() {
	logrus.SetOutput(io.Discard)
	logrus.SetLevel(logrus.PanicLevel)
	qcow2.RegisterDecompressors()
}

// routeLibraryLogs sends go-qcow2reader's warnings (a package-level hook)
// to the command's logger.
func routeLibraryLogs(log *slog.Logger) { qcow2.RouteWarnings(log) }

// newLogger builds the process's logger: text on stderr, at warn level
// unless verbose.
func newLogger(w io.Writer, verbose bool) *slog.Logger {
	level := slog.LevelWarn
	if verbose {
		level = slog.LevelInfo
	}
	log := slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: level}))
	routeLibraryLogs(log)
	return log
}

func oneLine(s string) string {
	out := make([]rune, 0, len(s))
	for _, r := range s {
		if r == '\n' || r == '\r' {
			r = ' '
		}
		out = append(out, r)
	}
	return string(out)
}
