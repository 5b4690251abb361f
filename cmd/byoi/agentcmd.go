package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/byoi/byoi/agent"
	"github.com/byoi/byoi/blockdev"
	"github.com/byoi/byoi/imaging/fetch"
	"github.com/byoi/byoi/internal/logtail"
)

// agentSettings are where `byoi agent` finds its control plane: flags,
// then the environment, then the kernel command line (PXE boots).
type agentSettings struct {
	url, server, token, caCert string
}

// kernel command line keys and environment variables, in that order of
// the fields of agentSettings.
var (
	cmdlineKeys = [4]string{"byoi.url", "byoi.server", "byoi.token", "byoi.ca_cert"}
	envKeys     = [4]string{"BYOI_URL", "BYOI_SERVER", "BYOI_TOKEN", "BYOI_CA_CERT"}
)

// maxCmdline bounds what is read of the kernel command line (the kernel's
// own limit is a few KiB).
const maxCmdline = 64 << 10

// parseCmdline reads key=value words of a kernel command line.
func parseCmdline(s string) map[string]string {
	out := map[string]string{}
	for _, w := range strings.Fields(s) {
		if k, v, ok := strings.Cut(w, "="); ok {
			out[k] = strings.Trim(v, `"`)
		}
	}
	return out
}

// fill completes s from the environment, then the kernel command line.
func (s *agentSettings) fill(getenv func(string) string, cmdline map[string]string) {
	fields := [4]*string{&s.url, &s.server, &s.token, &s.caCert}
	for i, f := range fields {
		if *f == "" {
			*f = getenv(envKeys[i])
		}
		if *f == "" {
			*f = cmdline[cmdlineKeys[i]]
		}
	}
}

// cmdAgent is `byoi agent`: the rescue agent.
func cmdAgent(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("agent", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		set                          agentSettings
		disk, cmdlineFile            string
		noReboot, once, jsonOut, vrb bool
		sectorSize, memoryReserve    int64
		stagingDir                   string
		sysRoot, procRoot, devRoot   string
		reportInterval, heartbeat    time.Duration
		connectTimeout, stallTimeout time.Duration
		noProgress                   time.Duration
		speedTime                    time.Duration
		speedLimit                   int64
		retries                      int
	)
	fs.StringVar(&set.url, "url", "", "the control plane's base URL, e.g. http://10.0.2.2:8080 (env BYOI_URL, kernel byoi.url=)")
	fs.StringVar(&set.server, "server", "", "this server's name (env BYOI_SERVER, kernel byoi.server=)")
	fs.StringVar(&set.token, "token", "", "this server's agent token (env BYOI_TOKEN, kernel byoi.token=); never shown")
	fs.StringVar(&set.caCert, "ca-cert", "", "PEM `file` of extra CA certificates for the control plane and the image (env BYOI_CA_CERT)")
	fs.StringVar(&disk, "disk", "", "write this target (a block device or a disk image file) instead of the first disk of the job's diskGroupId")
	fs.Int64Var(&sectorSize, "sector-size", 0, "logical sector size of a regular-file --disk (512 or 4096)")
	fs.BoolVar(&noReboot, "no-reboot", false, "do not reboot after a deployment (tests, use by hand)")
	fs.BoolVar(&once, "once", false, "exit after one deployment: 0 when it ended done, 1 on error")
	fs.BoolVar(&jsonOut, "json", false, "print the events as JSON lines on stdout")
	fs.BoolVar(&vrb, "v", false, "verbose log on stderr")
	fs.Int64Var(&memoryReserve, "memory-reserve", 1<<30, "qcow2 staging: `bytes` of memory to keep free")
	fs.StringVar(&stagingDir, "staging-dir", "", "qcow2 staging: a `directory` for when memory and the disk tail do not fit")
	fs.DurationVar(&connectTimeout, "connect-timeout", 30*time.Second, "image download: connect and response-header timeout")
	fs.DurationVar(&stallTimeout, "stall-timeout", 60*time.Second, "image download: no byte for this long resumes the transfer")
	fs.Int64Var(&speedLimit, "speed-limit", 1024, "image download: slower than this many `bytes`/s over --speed-time resumes the transfer (-1: off)")
	fs.DurationVar(&speedTime, "speed-time", 60*time.Second, "image download: the window of --speed-limit")
	fs.DurationVar(&noProgress, "no-progress-limit", agent.DefaultNoProgressLimit, "stop a deployment that reported nothing for this long, with a dump of where it waited on stderr (-1s: never)")
	fs.IntVar(&retries, "retries", 8, "image download: retries on connection errors, 408, 429, 5xx")
	fs.DurationVar(&reportInterval, "report-interval", 2*time.Second, "post queued events this often (a step change at once)")
	fs.DurationVar(&heartbeat, "heartbeat", 30*time.Second, "post a heartbeat when nothing was sent for this long")
	fs.StringVar(&cmdlineFile, "cmdline", "/proc/cmdline", "the kernel command line to read byoi.* settings from (testing)")
	fs.StringVar(&sysRoot, "sysfs", "", "read disks from this sysfs tree instead of /sys (testing)")
	fs.StringVar(&procRoot, "procfs", "", "read mounts and swaps from this tree instead of /proc (testing)")
	fs.StringVar(&devRoot, "devfs", "", "device nodes under this directory instead of /dev (testing)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usagef("unexpected argument %q", fs.Arg(0))
	}
	cmdline := map[string]string{}
	if b, err := readLimited(cmdlineFile, maxCmdline); err == nil {
		cmdline = parseCmdline(string(b))
	}
	set.fill(os.Getenv, cmdline)
	if set.url == "" || set.server == "" || set.token == "" {
		return usagef("the control plane URL, the server name and its token are needed: --url/--server/--token, BYOI_URL/BYOI_SERVER/BYOI_TOKEN, or byoi.url=/byoi.server=/byoi.token= on the kernel command line")
	}
	var caPEM []byte
	if set.caCert != "" {
		var err error
		if caPEM, err = readLimited(set.caCert, maxCACertSize); err != nil {
			return fmt.Errorf("--ca-cert: %w", err)
		}
	}
	client, err := agent.NewClient(set.url, set.server, set.token, agent.ClientOptions{CACertPEM: caPEM})
	if err != nil {
		return err
	}
	// The agent's own log is kept too: its redacted tail goes to the
	// control plane when a deployment fails.
	logBuf := logtail.NewBuffer(0)
	log := newLogger(io.MultiWriter(stderr, logBuf), vrb)
	rep := newRenderer(stdout, stderr, jsonOut)
	defer rep.close()
	env := agent.Env{
		Machine:    blockdev.System{SysRoot: sysRoot, ProcRoot: procRoot, DevRoot: devRoot},
		Target:     disk,
		SectorSize: sectorSize,
		Options: agent.Options{
			Fetch: fetch.Options{ConnectTimeout: connectTimeout, StallTimeout: stallTimeout, MaxRetries: retries,
				SpeedLimit: speedLimit, SpeedTime: speedTime, CACertPEM: caPEM},
			MemoryReserve: memoryReserve,
			StagingDir:    stagingDir,
			Logger:        log,
		},
		Rebooter:        agent.SystemRebooter{},
		NoProgressLimit: noProgress,
		Diagnostics:     stderr,
	}
	if noReboot {
		env.Rebooter = skippedReboot{w: stderr}
	}
	fmt.Fprintf(stderr, "byoi agent %s: server %s, control plane %s\n", version, set.server, set.url)
	err = agent.Serve(ctx, agent.AgentConfig{
		Client: client, Env: env, Version: version, Once: once, Progress: rep,
		SysRoot: sysRoot, ReportInterval: reportInterval, Heartbeat: heartbeat, LogTail: logBuf,
	})
	if err != nil && ctx.Err() != nil {
		return fmt.Errorf("interrupted: %w", ctx.Err())
	}
	return err
}

// skippedReboot stands in for the reboot with --no-reboot: it says where
// the reboot would happen (after the final status was acknowledged).
type skippedReboot struct{ w io.Writer }

func (s skippedReboot) Reboot(context.Context) error {
	fmt.Fprintln(s.w, "reboot skipped (--no-reboot): the final status was acknowledged, the server would now boot its disk")
	return nil
}
