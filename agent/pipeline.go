package agent

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/byoi/byoi/configdrive"
	"github.com/byoi/byoi/imaging"
	"github.com/byoi/byoi/partition"
)

// Disk is the target of a deployment: an opened, locked disk (or a regular
// file standing in for one). blockdev.Device implements it.
type Disk interface {
	imaging.Target
	Path() string
}

// rereader is implemented by disks whose kernel partition table can be
// re-read (block devices).
type rereader interface {
	RereadPartitions(ctx context.Context) error
}

// Rebooter reboots the machine into the deployed disk. It is an interface so
// tests never reboot anything.
type Rebooter interface {
	Reboot(ctx context.Context) error
}

// Deployer runs deployment jobs. The zero value works: no status reports,
// no reboot, default download settings.
type Deployer struct {
	Fetch         imaging.FetchOptions
	MemoryReserve int64  // qcow2 staging: memory kept free (default 1 GiB)
	StagingDir    string // qcow2 staging: a directory to use when memory and the disk tail do not fit
	Logger        *slog.Logger
	Report        Reporter
	Rebooter      Rebooter // nil: do not reboot
}

// Result describes a finished deployment.
type Result struct {
	Format      string               // raw or qcow2
	ImageBytes  int64                // bytes downloaded
	DiskBytes   int64                // bytes of the disk the image covers (virtual size)
	Checksum    string               // the verified checksum ("" when none was given)
	Table       *partition.Table     // the final partition table
	ConfigDrive *partition.Partition // the config-2 partition, nil when none
	Staged      string               // where a qcow2 was staged
	Boot        *BootReport          // how the deployed disk can boot
	Notes       []string             // things the operator should know (re-read deferred, stale config-2 elsewhere)
	Elapsed     time.Duration
}

func (d *Deployer) logger() *slog.Logger {
	if d.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return d.Logger
}

func (d *Deployer) report(e Event) {
	if d.Report != nil {
		d.Report(e)
	}
}

// step runs one pipeline step: it logs its start and end and reports status,
// and turns a failure into the one user-facing message.
func (d *Deployer) step(ctx context.Context, name, msg string, fn func() error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	start := time.Now()
	d.logger().Info("step start", "step", name)
	d.report(Event{Status: StatusDoing, Step: name, Message: msg})
	if err := fn(); err != nil {
		d.logger().Error("step failed", "step", name, logAttrsErr(err), "elapsed", time.Since(start))
		return &stepError{step: name, err: err}
	}
	d.logger().Info("step done", "step", name, "elapsed", time.Since(start).Round(time.Millisecond))
	return nil
}

type stepError struct {
	step string
	err  error
}

func (e *stepError) Error() string { return e.err.Error() }
func (e *stepError) Unwrap() error { return e.err }

// Deploy runs the whole job onto disk: fetch, verify, write, relocate the
// backup GPT, add the ConfigDrive, flush. The disk must already be checked
// for use by the running system and locked by the caller. On failure after
// the disk was touched, the disk is left with no partition table at all.
// Deploy reports a final "done" or "error" event; it does not reboot (see
// Finish).
func (d *Deployer) Deploy(ctx context.Context, job *Job, disk Disk) (*Result, error) {
	start := time.Now()
	res, err := d.deploy(ctx, job, disk)
	if err != nil {
		step := ""
		var se *stepError
		if errors.As(err, &se) {
			step = se.step
		}
		d.report(Event{Status: StatusError, Step: step, Message: UserMessage(err)})
		return nil, err
	}
	res.Elapsed = time.Since(start)
	d.report(Event{Status: StatusDone, Step: StepFinish, Message: "done", BytesDone: res.ImageBytes, BytesTotal: res.ImageBytes})
	return res, nil
}

func (d *Deployer) deploy(ctx context.Context, job *Job, disk Disk) (*Result, error) {
	log := d.logger()
	res := &Result{Format: job.ImageType}
	if err := d.step(ctx, StepPreflight, "checking job and disk", func() error {
		job.Normalize()
		if err := job.Validate(); err != nil {
			return err
		}
		log.Info("deploying", "job", job, "disk", disk.Path(), "diskSize", disk.Size(), "sectorSize", disk.SectorSize())
		return nil
	}); err != nil {
		return nil, err
	}

	var h hash.Hash
	if job.Checksum != "" {
		var err error
		if h, err = imaging.NewHash(job.ChecksumType); err != nil {
			return nil, &stepError{StepPreflight, err}
		}
	}
	verify := func() error {
		if h == nil {
			return nil
		}
		if err := imaging.VerifyChecksum(job.ChecksumType, job.Checksum, h); err != nil {
			return err
		}
		res.Checksum = hex.EncodeToString(h.Sum(nil))
		log.Info("checksum verified", "type", job.ChecksumType)
		return nil
	}

	var stream *imaging.Stream
	if err := d.step(ctx, StepFetch, "downloading image", func() error {
		fo := d.Fetch
		fo.Headers = job.Headers
		if fo.Logger == nil {
			fo.Logger = log
		}
		var err error
		stream, err = imaging.Fetch(ctx, job.ImageURL, fo)
		return err
	}); err != nil {
		return nil, err
	}
	defer stream.Close()

	progress := func(step string) imaging.Progress {
		return func(done, total int64) {
			d.report(Event{Status: StatusDoing, Step: step, Message: step, BytesDone: done, BytesTotal: total})
		}
	}

	// imageEnd is how far the image reached on the disk, for the wipe.
	var imageEnd int64
	wipe := func(cause error) error {
		if werr := imaging.WipeAfterFailure(ctx, disk, imageEnd); werr != nil {
			log.Error("could not wipe the disk after a failure", logAttrsErr(werr))
			return errors.Join(cause, werr)
		}
		log.Info("disk left without a partition table after the failure")
		return cause
	}
	checkHead := func(head []byte) error {
		return partition.CheckSectorSize(head, disk.SectorSize())
	}

	switch job.ImageType {
	case "raw":
		if err := d.step(ctx, StepWrite, "writing raw image", func() error {
			r, err := imaging.WriteRaw(ctx, stream, disk, imaging.RawOptions{
				DeclaredSize: stream.Size(),
				TargetName:   disk.Path(),
				Hash:         h,
				Verify:       verify,
				Progress:     progress(StepWrite),
				Logger:       log,
				Check:        checkHead,
			})
			res.ImageBytes, res.DiskBytes = r.Written, r.Written
			imageEnd = r.Written
			return err
		}); err != nil {
			return nil, err // WriteRaw already wiped what it wrote
		}
	case "qcow2":
		var staged imaging.Staged
		// Staging may use the disk's tail: once it has, any failure must
		// leave no partition table (the old system's tail is gone).
		tracked := &writeTracker{Target: disk}
		if err := d.step(ctx, StepFetch, "downloading qcow2 image", func() error {
			// The real format must be qcow2 before anything is staged.
			head := make([]byte, 64<<10)
			n, err := io.ReadFull(stream, head)
			if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
				return err
			}
			head = head[:n]
			if _, err := imaging.CheckFormat("qcow2", head); err != nil {
				return err
			}
			staged, err = imaging.Stage(ctx, io.MultiReader(bytes.NewReader(head), stream), imaging.StageOptions{
				DeclaredSize:  stream.Size(),
				MemoryReserve: d.MemoryReserve,
				Target:        tracked,
				StagingDir:    d.StagingDir,
				Hash:          h,
				Progress:      progress(StepFetch),
				Logger:        log,
			})
			return err
		}); err != nil {
			if tracked.wrote.Load() {
				return nil, wipe(err)
			}
			return nil, err
		}
		defer staged.Close()
		res.ImageBytes = staged.Size()
		res.Staged = staged.Where()
		var info *imaging.Qcow2Info
		if err := d.step(ctx, StepVerify, "verifying image", func() error {
			if err := verify(); err != nil {
				return err
			}
			var err error
			info, err = imaging.CheckQcow2(staged, staged.Size(), disk.Path(), disk.Size())
			if err != nil {
				return err
			}
			head, err := readQcow2Head(staged, staged.Size(), info)
			if err != nil {
				return err
			}
			return checkHead(head)
		}); err != nil {
			if tracked.wrote.Load() {
				return nil, wipe(err)
			}
			return nil, err
		}
		res.DiskBytes = info.VirtualSize
		if err := d.step(ctx, StepWrite, "writing qcow2 image", func() error {
			imageEnd = info.VirtualSize
			return imaging.ConvertQcow2(ctx, staged, staged.Size(), disk, imaging.ConvertOptions{
				Progress: progress(StepWrite),
				Logger:   log,
			})
		}); err != nil {
			return nil, err // ConvertQcow2 already wiped what it wrote
		}
	default:
		return nil, &stepError{StepPreflight, &ValidationError{Field: "type", Message: "Bad format image, expected : qcow2, raw."}}
	}

	if err := d.step(ctx, StepPartition, "moving backup GPT to the end of the disk", func() error {
		return partition.RelocateBackupGPTFrom(ctx, disk, res.DiskBytes)
	}); err != nil {
		return nil, wipe(err)
	}

	if err := d.step(ctx, StepPartition, "checking how the image boots", func() error {
		t, err := partition.Read(disk)
		if err != nil {
			return fmt.Errorf("read the partition table: %w", err)
		}
		b := InspectBoot(disk, t, job.EFIBootloaderPath)
		res.Boot = &b
		for _, p := range b.Problems {
			log.Info("boot check", "problem", p)
			d.report(Event{Status: StatusDoing, Step: StepPartition, Message: "warning: " + p})
			res.Notes = append(res.Notes, p)
		}
		if b.BootloaderProblem != "" {
			// Refuse before reboot: the server's boot entry would point
			// at nothing.
			return &UserError{Message: b.BootloaderProblem}
		}
		return nil
	}); err != nil {
		return nil, wipe(err)
	}

	if job.ConfigDrive != nil {
		if err := d.step(ctx, StepConfigDrive, "creating the config-2 ConfigDrive", func() error {
			p, err := d.addConfigDrive(ctx, job, disk)
			if err != nil {
				return userErr("Could not create configdrive on disk.", err)
			}
			res.ConfigDrive = &p
			return nil
		}); err != nil {
			return nil, wipe(err)
		}
	}

	if err := d.step(ctx, StepFinish, "flushing the disk", func() error {
		if err := disk.Sync(); err != nil {
			return userErr("Can't write "+job.ImageType+" on disk.", err)
		}
		t, err := partition.Read(disk)
		if err != nil {
			return fmt.Errorf("read the final partition table: %w", err)
		}
		res.Table = t
		if rr, ok := disk.(rereader); ok {
			if err := rr.RereadPartitions(ctx); err != nil {
				// The table is on disk; only the running kernel has not
				// seen it. The reboot applies it.
				res.Notes = append(res.Notes, err.Error())
				log.Warn("partition table re-read", logAttrsErr(err))
			}
		}
		return nil
	}); err != nil {
		return nil, wipe(err)
	}
	return res, nil
}

// addConfigDrive builds the config-2 filesystem and writes it into a new
// partition at the end of the disk, or into the image's own config-2
// partition when it has one.
func (d *Deployer) addConfigDrive(ctx context.Context, job *Job, disk Disk) (partition.Partition, error) {
	cd := job.ConfigDrive
	content := configdrive.Content{
		UUID:     configdrive.DeriveUUID(job.ImageURL + "\x00" + cd.Hostname + "\x00" + disk.Path()),
		Hostname: cd.Hostname,
		SSHKey:   cd.SSHKey,
		UserData: cd.UserData,
		Meta:     cd.Metadata,
	}
	format := configdrive.FormatFor(disk.SectorSize())
	img, err := configdrive.Build(ctx, content, format)
	if err != nil {
		return partition.Partition{}, err
	}
	p, found, err := partition.FindByLabel(disk, "config-2")
	if err != nil {
		return partition.Partition{}, err
	}
	if found {
		if int64(len(img)) > p.Size {
			return partition.Partition{}, fmt.Errorf("the image's config-2 partition holds %d bytes, the ConfigDrive needs %d", p.Size, len(img))
		}
		d.logger().Info("reusing the image's config-2 partition", "number", p.Number)
	} else {
		p, err = partition.AddPartition(ctx, disk, "config-2", int64(len(img)))
		if err != nil {
			return partition.Partition{}, err
		}
	}
	if _, err := disk.WriteAt(img, p.Start); err != nil {
		return partition.Partition{}, fmt.Errorf("write config-2: %w", err)
	}
	if rest := p.Size - int64(len(img)); rest > 0 {
		if err := disk.ZeroRange(ctx, p.Start+int64(len(img)), rest); err != nil {
			return partition.Partition{}, fmt.Errorf("clear the rest of config-2: %w", err)
		}
	}
	if err := disk.Sync(); err != nil {
		return partition.Partition{}, err
	}
	// Read it back from the disk as cloud-init will.
	if err := configdrive.Verify(io.NewSectionReader(disk, p.Start, int64(len(img))), int64(len(img)), format, content.UUID); err != nil {
		return partition.Partition{}, err
	}
	return p, nil
}

// writeTracker records whether anything was written through it.
type writeTracker struct {
	imaging.Target
	wrote atomic.Bool
}

func (w *writeTracker) WriteAt(p []byte, off int64) (int, error) {
	w.wrote.Store(true)
	return w.Target.WriteAt(p, off)
}

// Finish reboots into the deployed disk when a Rebooter is set.
func (d *Deployer) Finish(ctx context.Context) error {
	if d.Rebooter == nil {
		return nil
	}
	d.logger().Info("rebooting to disk")
	return d.Rebooter.Reboot(ctx)
}
