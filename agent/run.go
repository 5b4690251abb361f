package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/byoi/byoi/agentapi"
	"github.com/byoi/byoi/blockdev"
	"github.com/byoi/byoi/imaging"
	"github.com/byoi/byoi/job"
)

// Machine is where Run finds disks and learns whether they are in use:
// blockdev.System is the real one (or a fake sysfs/procfs/devfs tree in
// tests, see blockdev/blockdevtest).
type Machine interface {
	Disks(blockdev.ScanOptions) ([]blockdev.Disk, error)
	InUseByPath(path string) (reason string, err error)
	FindConfigDriveLabels(exclude string) ([]string, error)
}

// Rebooter reboots the machine into the deployed disk. It is an interface so
// tests never reboot anything.
type Rebooter interface {
	Reboot(ctx context.Context) error
}

// Env is everything a deployment needs besides its job.
type Env struct {
	// Machine lists the disks and tells which are in use (nil: the real
	// machine, blockdev.System{}).
	Machine Machine
	// Target is the disk to write, a block device or a regular file
	// standing in for one; "" picks the first disk of the job's disk group.
	Target string
	// SectorSize is the logical sector size of a regular-file Target (0:
	// 512); a block device's own is always used.
	SectorSize int64

	// Options are the deployment's settings (the download, qcow2
	// staging, the logger, the server's efiBootloaderPath): the Deployer
	// Run drives gets them.
	Options

	// Report receives the events (through a Sink); a FinalReporter's Final
	// must acknowledge the final event before the machine reboots.
	Report Reporter
	// ProgressInterval throttles progress events (0: the Sink's default).
	ProgressInterval time.Duration
	// Rebooter reboots the machine after a successful deployment whose
	// final status was delivered (nil: no reboot). Before that, Run makes
	// the deployed disk the next boot after the network (prepareBoot).
	Rebooter Rebooter
	// EFIVarsDir is the efivarfs the UEFI boot entry is written to before
	// a reboot ("" = the kernel's when the machine booted by UEFI; "-" =
	// never).
	EFIVarsDir string
	// NoProgressLimit stops a deployment that sent no event (progress, a step,
	// a warning) for this long: its context is cancelled, the stacks of
	// the goroutines running byoi code go to Diagnostics, and it fails
	// with NoProgress (0: DefaultNoProgressLimit; < 0: never).
	NoProgressLimit time.Duration
	// Diagnostics receives the goroutine dump of a stalled deployment
	// (nil: none; the log has a line either way).
	Diagnostics io.Writer
	// noProgressGraceForTest replaces defaultNoProgressGrace (tests).
	noProgressGraceForTest time.Duration
	// BeforeReboot, when set, is called after the final "done" was
	// delivered and just before the reboot, with how the disk will boot
	// (the agent tells the control plane).
	BeforeReboot func(ctx context.Context, boot agentapi.BootInfo)
}

func (env *Env) logger() *slog.Logger {
	if env.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return env.Logger
}

func (env *Env) machine() Machine {
	if env.Machine == nil {
		return blockdev.System{}
	}
	return env.Machine
}

// finalTimeout bounds the delivery of an error's final event, which must
// get out even when ctx was cancelled (SIGTERM: "interrupted").
const finalTimeout = 30 * time.Second

// Run owns one deployment from disk selection to reboot: it picks the disk
// (env.Target, or the first disk of the job's disk group), refuses a disk
// the running system uses, opens it exclusively and locks it, warns about
// other disks carrying a config-2 filesystem, deploys, sends the final
// event (done or error, with the catalog code), and then, only after a
// success whose final event was delivered, reboots through env.Rebooter.
// A watchdog stops a deployment that reports nothing for
// env.NoProgressLimit (NoProgress, see watched). The caller's Job is not
// changed.
func Run(ctx context.Context, j *job.Job, env Env) (*Result, error) {
	sink := NewSink(env.Report, env.ProgressInterval)
	log := env.logger()
	type deployed struct {
		res  *Result
		boot agentapi.BootInfo
	}
	out, err := watched(ctx, &env, sink, func(ctx context.Context) (deployed, error) {
		res, err := run(ctx, j, &env, sink)
		if err != nil {
			return deployed{}, err
		}
		var boot agentapi.BootInfo
		if env.Rebooter != nil {
			// Before "done": a boot entry that cannot be written is a
			// warning the customer sees.
			d := &Deployer{Options: Options{Logger: log}, Events: func(e job.Event) { sink.Emit(e) }}
			boot = prepareBoot(&env, d, j, res)
		}
		return deployed{res, boot}, nil
	})
	if err != nil {
		reportFailure(ctx, &env, sink, err)
		return nil, err
	}
	res, boot := out.res, out.boot
	done := job.Event{Status: job.StatusDone, Step: job.StepFinish, Code: job.MsgDone, Message: job.Text(job.MsgDone),
		BytesDone: res.ImageBytes, BytesTotal: res.ImageBytes}
	if err := deliver(ctx, &env, sink, done); err != nil {
		// The control plane did not store "done": rebooting now would
		// leave the customer without news. The deployment is on disk.
		return res, fmt.Errorf("deployed, but the final status was not acknowledged: %w", err)
	}
	if env.Rebooter != nil {
		if env.BeforeReboot != nil {
			env.BeforeReboot(ctx, boot)
		}
		log.Info("rebooting to disk")
		if err := env.Rebooter.Reboot(ctx); err != nil {
			return res, fmt.Errorf("reboot: %w", err)
		}
	}
	return res, nil
}

// reportFailure sends the final error event for err: the catalog code and
// message, at the step it happened in. It must get out even when ctx was
// cancelled (SIGTERM: "interrupted"), within finalTimeout.
func reportFailure(ctx context.Context, env *Env, sink *Sink, err error) {
	code, msg := Describe(err)
	step := FailedStep(err)
	if step == "" {
		step = job.StepPreflight
	}
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), finalTimeout)
	defer cancel()
	if ferr := deliver(fctx, env, sink, job.Event{Status: job.StatusError, Step: step, Code: code, Message: msg}); ferr != nil {
		env.logger().Error("final status not delivered", logAttrsErr(ferr))
	}
}

// deliver sends the final event: through the reporter's Final when it has
// one (acknowledged), else like any event.
func deliver(ctx context.Context, env *Env, sink *Sink, e job.Event) error {
	e.Kind = job.KindInfo
	if fr, ok := env.Report.(FinalReporter); ok {
		return fr.Final(ctx, sink.stamp(e))
	}
	sink.Emit(e)
	return nil
}

func run(ctx context.Context, j *job.Job, env *Env, sink *Sink) (*Result, error) {
	log := env.logger()
	d := &Deployer{Options: env.Options, Events: func(e job.Event) { sink.Emit(e) }, Alive: sink.Touch}
	d.Logger = log
	if j == nil {
		return nil, &stepError{job.StepPreflight, job.Errorf(job.JobMissing)}
	}
	// Validate first (a copy: the caller's Job is not changed): the disk
	// group must be a valid number before a disk is chosen from it.
	j = j.Clone()
	j.Normalize()
	if err := j.Validate(); err != nil {
		return nil, &stepError{job.StepPreflight, err}
	}
	disk, err := openDisk(env, j)
	if err != nil {
		return nil, &stepError{job.StepPreflight, err}
	}
	defer disk.Close()
	if j.ConfigDrive != nil && (disk.IsBlockDevice() || env.Target == "") {
		// cloud-init takes the first config-2 it finds: a stale one on
		// another disk could win over ours.
		others, err := env.machine().FindConfigDriveLabels(disk.Path())
		if err != nil {
			log.Warn("could not look for other config-2 drives", logAttrsErr(err))
		}
		for _, o := range others {
			d.warn(nil, job.StepPreflight, job.WarnOtherConfigDrive, o)
		}
	}
	res, err := d.Deploy(ctx, j, disk)
	if err != nil {
		return nil, err
	}
	if err := disk.Close(); err != nil {
		return nil, &stepError{job.StepFinish, &imaging.WriteError{Format: j.ImageType, Err: err}}
	}
	return res, nil
}

// openDisk chooses the target, refuses a block device the running system
// uses, then opens it (O_EXCL) and locks it for the whole job. A regular
// file is opened as is.
func openDisk(env *Env, j *job.Job) (*blockdev.Device, error) {
	m := env.machine()
	path := env.Target
	if path == "" {
		disks, err := m.Disks(blockdev.ScanOptions{})
		if err != nil {
			return nil, fmt.Errorf("list disks: %w", err)
		}
		groups := blockdev.MakeGroups(disks)
		d, err := blockdev.SelectDisk(groups, j.DiskGroupID)
		switch {
		case errors.Is(err, blockdev.ErrNoGroup):
			return nil, job.Errorf(job.DiskGroupMissing, j.DiskGroupID, groupList(groups))
		case errors.Is(err, blockdev.ErrInUse):
			return nil, job.Errorf(job.DiskInUse, d.Path, d.InUseReason)
		case err != nil:
			return nil, err
		}
		path = d.Path
		env.logger().Info("selected disk", "group", j.DiskGroupID, "disk", path)
	}
	if _, err := os.Stat(path); err != nil {
		return nil, fmt.Errorf("target: %w", err)
	}
	// A block device the running system uses, a partition, a file behind
	// a loop device in use: refused before it is opened.
	reason, err := m.InUseByPath(path)
	if err != nil {
		return nil, fmt.Errorf("check whether %s is in use: %w", path, err)
	}
	if reason != "" {
		return nil, job.Errorf(job.DiskInUse, path, reason)
	}
	d, err := blockdev.Open(path, blockdev.OpenOptions{SectorSize: env.SectorSize})
	if err != nil {
		return nil, err
	}
	if err := d.Lock(); err != nil {
		d.Close()
		return nil, err
	}
	return d, nil
}

// groupList names the disk groups there are, for DiskGroupMissing.
func groupList(groups []blockdev.Group) string {
	if len(groups) == 0 {
		return "no eligible disks found"
	}
	have := make([]string, len(groups))
	for i, g := range groups {
		have[i] = fmt.Sprintf("%d (%s)", g.ID, g.Description)
	}
	return "the groups are " + strings.Join(have, ", ")
}

// SystemRebooter reboots the machine (Linux reboot(2) after sync). It is
// only used by the real binary when asked to reboot; tests use fakes.
type SystemRebooter struct{}

// Reboot flushes filesystems and restarts the machine.
func (SystemRebooter) Reboot(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := reboot(); err != nil {
		return fmt.Errorf("reboot: %w", err)
	}
	return nil
}
