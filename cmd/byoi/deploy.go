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
	"github.com/byoi/byoi/job"
)

type stringList []string

func (l *stringList) String() string     { return strings.Join(*l, ", ") }
func (l *stringList) Set(s string) error { *l = append(*l, s); return nil }

type deployFlags struct {
	job, disk                          string
	diskGroup                          int
	url, typ, checksum, checksumType   string
	headers, meta                      stringList
	hostname, sshKey, userDataFile     string
	caCert                             string
	connectTimeout, stallTimeout       time.Duration
	noProgress                         time.Duration
	speedTime                          time.Duration
	speedLimit                         int64
	retries                            int
	memoryReserve                      int64
	stagingDir                         string
	qcow2Staging                       bool
	sectorSize                         int64
	jsonOut, verbose, reboot, progress bool
	sysRoot, procRoot, devRoot         string
	facts                              factFlags
	imageChecks                        string
}

func cmdDeploy(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	var f deployFlags
	fs := flag.NewFlagSet("deploy", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&f.job, "job", "", "job spec `file` in either OVH shape (- for stdin)")
	fs.StringVar(&f.disk, "disk", "", "target `path`: a block device or an existing regular file")
	fs.IntVar(&f.diskGroup, "disk-group", -1, "deploy to the first disk of disk group `N` (0 = 1); overrides the job's diskGroupId")
	fs.StringVar(&f.url, "url", "", "image URL (http or https)")
	fs.StringVar(&f.typ, "type", "", "image type: qcow2 or raw")
	fs.StringVar(&f.checksum, "checksum", "", "expected checksum (hex)")
	fs.StringVar(&f.checksumType, "checksum-type", "", "checksum type: md5, sha1, sha256, sha512")
	fs.Var(&f.headers, "header", "HTTP header 'Name: value' sent with the download (repeatable; the value is never shown)")
	fs.StringVar(&f.hostname, "hostname", "", "ConfigDrive hostname")
	fs.StringVar(&f.sshKey, "ssh-key", "", "ConfigDrive SSH public key line")
	fs.StringVar(&f.userDataFile, "user-data", "", "ConfigDrive user data `file`")
	fs.Var(&f.meta, "meta", "ConfigDrive metadata 'key=value' (repeatable)")
	fs.StringVar(&f.caCert, "ca-cert", "", "PEM `file` of extra CA certificates for HTTPS")
	fs.DurationVar(&f.connectTimeout, "connect-timeout", 30*time.Second, "connect and response-header timeout")
	fs.DurationVar(&f.stallTimeout, "stall-timeout", 60*time.Second, "a transfer that delivers nothing for this long is resumed")
	fs.DurationVar(&f.noProgress, "no-progress-limit", agent.DefaultNoProgressLimit, "stop a deployment that reported nothing for this long, with a dump of where it waited on stderr (-1s: never)")
	fs.IntVar(&f.retries, "retries", 8, "download retries on connection errors, 408, 429, 5xx")
	fs.Int64Var(&f.speedLimit, "speed-limit", 1024, "a transfer slower than this many `bytes`/s over --speed-time is resumed (-1: off)")
	fs.DurationVar(&f.speedTime, "speed-time", 60*time.Second, "the window of --speed-limit")
	fs.Int64Var(&f.memoryReserve, "memory-reserve", 1<<30, "qcow2 staging: `bytes` of memory to keep free")
	fs.StringVar(&f.stagingDir, "staging-dir", "", "qcow2 staging: a `directory` to use when memory and the disk tail do not fit")
	fs.BoolVar(&f.qcow2Staging, "qcow2-staging", false, "stage a qcow2 whole before converting it, even when its layout allows converting it as it streams")
	fs.Int64Var(&f.sectorSize, "sector-size", 0, "logical sector size of a regular-file target (512 or 4096)")
	fs.BoolVar(&f.jsonOut, "json", false, "print one JSON status event per line on stdout")
	fs.BoolVar(&f.verbose, "v", false, "verbose log on stderr")
	fs.BoolVar(&f.reboot, "reboot", false, "reboot into the disk when done (rescue use)")
	fs.StringVar(&f.sysRoot, "sysfs", "", "read disks from this sysfs tree instead of /sys (testing)")
	fs.StringVar(&f.procRoot, "procfs", "", "read mounts and swaps from this tree instead of /proc (testing)")
	fs.StringVar(&f.devRoot, "devfs", "", "device nodes under this directory instead of /dev (testing)")
	f.facts.register(fs)
	fs.StringVar(&f.imageChecks, "image-checks", "", "the image checks: strict (warnings refuse too) or off; overrides the job's imageChecks (default: refusals refuse, warnings are reported)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usagef("unexpected argument %q", fs.Arg(0))
	}
	switch f.imageChecks {
	case "", job.ImageChecksStrict, job.ImageChecksOff:
	default:
		return usagef("--image-checks must be strict or off, got %q", f.imageChecks)
	}
	j, err := buildJob(&f, stdin)
	if err != nil {
		return err
	}
	if f.imageChecks != "" {
		j.ImageChecks = f.imageChecks
	}
	inv, fl, err := f.facts.facts()
	if err != nil {
		return err
	}
	if f.diskGroup >= 0 {
		j.DiskGroupID = max(f.diskGroup, 1)
	}
	if f.disk != "" && f.diskGroup >= 0 {
		return usagef("--disk and --disk-group are exclusive")
	}
	log := newLogger(stderr, f.verbose)
	rep := newRenderer(stdout, stderr, f.jsonOut)
	defer rep.close()
	env := agent.Env{
		Machine:    blockdev.System{SysRoot: f.sysRoot, ProcRoot: f.procRoot, DevRoot: f.devRoot},
		Target:     f.disk,
		SectorSize: f.sectorSize,
		Options: agent.Options{
			Fetch: fetch.Options{ConnectTimeout: f.connectTimeout, StallTimeout: f.stallTimeout, MaxRetries: f.retries,
				SpeedLimit: f.speedLimit, SpeedTime: f.speedTime},
			MemoryReserve: f.memoryReserve,
			StagingDir:    f.stagingDir,
			Qcow2Staging:  f.qcow2Staging,
			Logger:        log,
			Inventory:     inv,
			Facts:         fl,
		},
		Report:          rep,
		NoProgressLimit: f.noProgress,
		Diagnostics:     stderr,
	}
	if f.caCert != "" {
		if env.Fetch.CACertPEM, err = readLimited(f.caCert, maxCACertSize); err != nil {
			return fmt.Errorf("--ca-cert: %w", err)
		}
	}
	if f.reboot {
		env.Rebooter = agent.SystemRebooter{}
	}
	if inv == nil && (f.disk == "" || isBlockDevice(f.disk)) {
		// The server's own facts for the image checks: how this rescue
		// booted, its disks' and NICs' drivers (a regular-file target is
		// no server's disk: none).
		if mi, err := agent.Inventory(env.Machine, f.sysRoot, version); err == nil {
			env.Inventory = &mi
		} else {
			log.Info("no inventory for the image checks", "err", err)
		}
	}
	res, err := agent.Run(ctx, j, env)
	if err != nil {
		return err
	}
	rep.close()
	if !f.jsonOut {
		printResult(stdout, res)
	}
	return nil
}

// buildJob reads --job or assembles a job from the flags, then validates.
func buildJob(f *deployFlags, stdin io.Reader) (*job.Job, error) {
	fromFlags := f.url != "" || f.typ != "" || f.checksum != "" || f.checksumType != "" || len(f.headers) > 0 ||
		f.hostname != "" || f.sshKey != "" || f.userDataFile != "" || len(f.meta) > 0
	if f.job != "" {
		if fromFlags {
			return nil, usagef("--job cannot be combined with --url, --type, --checksum, --header or ConfigDrive flags")
		}
		var data []byte
		var err error
		if f.job == "-" {
			data, err = readAllLimited(stdin, job.MaxJobSize)
		} else {
			data, err = readLimited(f.job, job.MaxJobSize)
		}
		if err != nil {
			return nil, fmt.Errorf("read job: %w", err)
		}
		return job.Parse(data)
	}
	if f.url == "" {
		return nil, usagef("give --job FILE, or --url and --type")
	}
	j := &job.Job{
		ImageURL:     f.url,
		ImageType:    f.typ,
		Checksum:     strings.ToLower(f.checksum),
		ChecksumType: f.checksumType,
		DiskGroupID:  1,
	}
	for _, h := range f.headers {
		hdr, err := job.ParseHeaderFlag(h)
		if err != nil {
			return nil, err
		}
		j.Headers = append(j.Headers, hdr)
	}
	if f.hostname != "" || f.sshKey != "" || f.userDataFile != "" || len(f.meta) > 0 {
		cd := &job.ConfigDrive{Hostname: f.hostname, SSHKey: f.sshKey}
		if f.userDataFile != "" {
			b, err := readLimited(f.userDataFile, job.MaxUserDataSize)
			if err != nil {
				return nil, fmt.Errorf("--user-data: %w", err)
			}
			cd.UserData = b
		}
		for _, kv := range f.meta {
			k, v, ok := strings.Cut(kv, "=")
			if !ok {
				return nil, usagef("--meta wants key=value, got %q", kv)
			}
			if cd.Metadata == nil {
				cd.Metadata = map[string]string{}
			}
			cd.Metadata[k] = v
		}
		j.ConfigDrive = cd
	}
	j.Normalize()
	if err := j.Validate(); err != nil {
		return nil, err
	}
	return j, nil
}

func printResult(w io.Writer, res *agent.Result) {
	fmt.Fprintf(w, "deployed %s image (%d bytes downloaded, %d bytes on disk) onto %s in %s\n",
		res.Format, res.ImageBytes, res.DiskBytes, res.Disk, res.Elapsed.Round(10*time.Millisecond))
	if res.Checksum != "" {
		fmt.Fprintf(w, "checksum verified: %s\n", res.Checksum)
	}
	if res.Staged != "" {
		fmt.Fprintf(w, "qcow2 staged in %s\n", res.Staged)
	}
	if res.Streamed {
		fmt.Fprintln(w, "qcow2 converted as it streamed in")
	}
	if res.Table != nil {
		printTable(w, res.Table)
	}
	if res.ConfigDrive != nil {
		fmt.Fprintf(w, "ConfigDrive: partition %d (config-2), %d bytes at offset %d\n",
			res.ConfigDrive.Number, res.ConfigDrive.Size, res.ConfigDrive.Start)
	}
	if c := res.Check; c != nil {
		fmt.Fprintf(w, "image checks: %d refusals, %d warnings (%d reads, %s read, %s)\n",
			len(c.Refusals()), len(c.Warnings()), c.Reads, humanBytes(c.BytesRead), c.Duration.Round(time.Millisecond))
	}
	if len(res.Notes) > 0 {
		// Each was shown as a warning line as it happened.
		fmt.Fprintf(w, "warnings: %d (above)\n", len(res.Notes))
	}
}

// isBlockDevice tells whether path is a block device.
func isBlockDevice(path string) bool {
	st, err := os.Stat(path)
	return err == nil && st.Mode()&os.ModeDevice != 0 && st.Mode()&os.ModeCharDevice == 0
}
