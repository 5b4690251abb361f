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
	"strings"
	"time"

	"github.com/byoi/byoi/configdrive"
	"github.com/byoi/byoi/imaging"
	"github.com/byoi/byoi/job"
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

// Deployer writes one job onto an opened, locked disk: fetch, verify,
// write, relocate the backup GPT, check how it boots, add the ConfigDrive,
// flush. Run is the whole deployment (disk choice, locking, final status,
// reboot) around it; Deployer is its engine, usable on its own in tests.
// The zero value works: no events, default download settings.
type Deployer struct {
	Fetch         imaging.FetchOptions
	MemoryReserve int64  // qcow2 staging: memory kept free (default 1 GiB)
	StagingDir    string // qcow2 staging: a directory to use when memory and the disk tail do not fit
	Logger        *slog.Logger
	// Events receives every event as the pipeline makes it (Run passes
	// them through its Sink). Nil drops them.
	Events func(job.Event)
	// Alive, when set, is called as image bytes arrive (Run passes its
	// Sink's Touch, for the watchdog). It must be cheap.
	Alive func()
	// ServerEFIBootloaderPath is the server's efiBootloaderPath (OVH's
	// server property, set by an earlier job or by PUT): the loader of the
	// UEFI boot entry when the job names none and that file is on the
	// deployed disk's EFI System Partition. Unlike the job's own path, it
	// never fails a deployment: an image without it boots by the default
	// path.
	ServerEFIBootloaderPath string
	// PhoneHomeURL, when set, goes into the ConfigDrive's vendor_data.json
	// (configdrive.Content.PhoneHomeURL).
	PhoneHomeURL string
}

// Result describes a finished deployment.
type Result struct {
	Disk        string               // the target's path
	Format      string               // raw, qcow2 or ova
	Compression string               // a raw image's: gzip, xz, zstd, bzip2 ("" when none)
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

func (d *Deployer) emit(e job.Event) {
	if d.Events != nil {
		d.Events(e)
	}
}

// warn reports a warning event and keeps it in the result's notes.
func (d *Deployer) warn(res *Result, step job.Step, code job.Code, args ...any) {
	msg := job.Text(code, args...)
	d.logger().Warn(msg, "step", step)
	d.emit(job.Event{Step: step, Kind: job.KindWarning, Code: code, Message: msg})
	if res != nil {
		res.Notes = append(res.Notes, msg)
	}
}

// progress returns an imaging.Progress reporting step's bytes.
func (d *Deployer) progress(step job.Step) imaging.Progress {
	return func(done, total int64) {
		d.emit(job.Event{Step: step, Kind: job.KindProgress, Message: string(step), BytesDone: done, BytesTotal: total})
	}
}

// stepMessages is the event message when each step starts (operator
// text; the customer's status message comes from job.ProgressMessage).
var stepMessages = map[job.Step]string{
	job.StepDownload:    "downloading image",
	job.StepVerify:      "verifying image",
	job.StepWrite:       "writing image",
	job.StepConfigDrive: "creating the config-2 ConfigDrive",
	job.StepFinish:      "flushing the disk",
}

// stepCodes are the steps whose start message is a catalog text.
var stepCodes = map[job.Step]job.Code{
	job.StepPreflight: job.MsgPreflight,
	job.StepRelocate:  job.MsgStepPartition,
	job.StepBootCheck: job.MsgStepBoot,
}

// begin reports that step starts.
func (d *Deployer) begin(step job.Step, msg string) {
	d.logger().Info("step start", "step", step)
	e := job.Event{Step: step, Kind: job.KindInfo, Message: msg}
	if msg == "" {
		e.Message = stepMessages[step]
		if c, ok := stepCodes[step]; ok {
			e.Code, e.Message = c, job.Text(c)
		}
	}
	d.emit(e)
}

// step runs one pipeline step: it logs its start and end, reports status,
// and tags a failure with the step it happened in.
func (d *Deployer) step(ctx context.Context, name job.Step, fn func() error) error {
	if err := ctx.Err(); err != nil {
		return &stepError{step: name, err: err}
	}
	start := time.Now()
	d.begin(name, "")
	if err := fn(); err != nil {
		d.logger().Error("step failed", "step", name, logAttrsErr(err), "elapsed", time.Since(start))
		return &stepError{step: name, err: err}
	}
	d.logger().Info("step done", "step", name, "elapsed", time.Since(start).Round(time.Millisecond))
	return nil
}

// stepError tags an error with the step it happened in.
type stepError struct {
	step job.Step
	err  error
}

func (e *stepError) Error() string { return e.err.Error() }
func (e *stepError) Unwrap() error { return e.err }

// FailedStep returns the step an error of Deploy or Run happened in ("" if
// none is known).
func FailedStep(err error) job.Step {
	var se *stepError
	if errors.As(err, &se) {
		return se.step
	}
	return ""
}

// deployment is the state of one Deploy.
type deployment struct {
	*Deployer
	job   *job.Job
	real  Disk           // the disk itself
	guard *imaging.Guard // over real: holds the table regions until commit
	disk  Disk           // what the pipeline writes: the guard
	res   *Result
	log   *slog.Logger
	hash  hash.Hash // nil when no checksum is asked for
	// imageEnd is how far the image region reached on the disk, for the
	// wipe after a failure.
	imageEnd int64
	// cd is the ConfigDrive, built in preflight (nil without one).
	cd       []byte
	cdFormat configdrive.Format
	cdUUID   string
	// verdict is the head's partition table verdict, once known.
	verdict *partition.Verdict
}

// guardDisk is the Guard seen as a Disk.
type guardDisk struct {
	*imaging.Guard
}

// Deploy runs the whole job onto disk. The disk must already be checked
// for use by the running system and locked by the caller (Run does both).
// On failure after the disk was touched, the disk is left with no partition
// table at all. Deploy works on its own copy of j: the caller's Job is left
// as it was. It sends no final event (Run does).
//
// Nothing that looks like a partition table reaches the disk before the
// end: an imaging.Guard holds the first MiB, the last MiB and the image's
// last MiB in memory, the old tables are cleared before the first byte is
// written, and Commit writes the held regions last. A crash at any point
// leaves either no table at all or the complete new system.
func (d *Deployer) Deploy(ctx context.Context, j *job.Job, disk Disk) (*Result, error) {
	start := time.Now()
	g := imaging.NewGuard(disk)
	dp := &deployment{Deployer: d, job: j.Clone(), real: disk, guard: g, disk: guardDisk{g}, log: d.logger()}
	dp.res = &Result{Disk: disk.Path()}
	if err := dp.preflight(ctx); err != nil {
		return nil, err
	}
	stream, err := dp.fetch(ctx)
	if err != nil {
		return nil, err
	}
	defer stream.Close()
	switch dp.job.ImageType {
	case job.ImageTypeRaw:
		err = dp.writeRaw(ctx, stream)
	case job.ImageTypeQcow2:
		err = dp.writeQcow2(ctx, stream)
	case job.ImageTypeOVA:
		err = dp.writeOVA(ctx, stream)
	default:
		err = &stepError{job.StepPreflight, job.Errorf(job.BadImageType)}
	}
	if err != nil {
		return nil, err
	}
	if err := dp.finishDisk(ctx); err != nil {
		return nil, err
	}
	dp.res.Elapsed = time.Since(start)
	return dp.res, nil
}

// preflight validates the job and sets up the checksum.
func (dp *deployment) preflight(ctx context.Context) error {
	return dp.step(ctx, job.StepPreflight, func() error {
		dp.job.Normalize()
		if err := dp.job.Validate(); err != nil {
			return err
		}
		dp.res.Format = dp.job.ImageType
		dp.log.Info("deploying", "job", dp.job, "disk", dp.disk.Path(), "diskSize", dp.disk.Size(), "sectorSize", dp.disk.SectorSize())
		if dp.job.Checksum != "" {
			h, err := imaging.NewHash(dp.job.ChecksumType)
			if err != nil {
				return err
			}
			dp.hash = h
		}
		return dp.buildConfigDrive(ctx)
	})
}

// buildConfigDrive builds the config-2 filesystem before anything is
// downloaded: its size decides whether it will fit, and a build failure
// must not cost the old system.
func (dp *deployment) buildConfigDrive(ctx context.Context) error {
	cd := dp.job.ConfigDrive
	if cd == nil {
		return nil
	}
	content := configdrive.Content{
		UUID:     configdrive.DeriveUUID(dp.job.ImageURL + "\x00" + cd.Hostname + "\x00" + dp.real.Path()),
		Hostname: cd.Hostname,
		SSHKey:   cd.SSHKey,
		UserData: cd.UserData,
		Meta:     cd.Metadata,
		// PhoneHomeURL: the control plane's "booted" watch (issue 25).
		PhoneHomeURL: dp.PhoneHomeURL,
	}
	dp.cdFormat = configdrive.FormatFor(dp.real.SectorSize())
	img, err := configdrive.Build(ctx, content, dp.cdFormat)
	if err != nil {
		return job.Wrap(err, job.ConfigDriveFailed)
	}
	dp.cd, dp.cdUUID = img, content.UUID
	return nil
}

// examineHead is every check of the disk image's first MiB (the raw image's,
// or a qcow2's virtual disk's) made before the disk is touched: the
// partition table as Linux will read it, the sector size, and room for the
// ConfigDrive on this disk.
func (dp *deployment) examineHead(ctx context.Context, head []byte) error {
	v, err := partition.Examine(head)
	switch {
	case errors.Is(err, partition.ErrNoTable):
		return &imaging.FormatError{Declared: job.ImageTypeRaw, Found: imaging.Sniff(head), NoTable: true}
	case err != nil:
		return err
	}
	if err := partition.CheckSectorSize(head, dp.real.SectorSize()); err != nil {
		return err
	}
	if dp.cd != nil {
		if err := partition.CheckRoom(ctx, head, dp.real.Size(), dp.real.SectorSize(), int64(len(dp.cd))); err != nil && !mayReuseConfigDrive(head) {
			return job.Wrap(err, job.ConfigDriveFailed)
		}
	}
	dp.verdict = v
	return nil
}

// mayReuseConfigDrive reports whether the image's table names a partition
// "config-2" (GPT name): the image may carry its own ConfigDrive partition,
// which is reused whatever room is left, so a lack of room is decided only
// once its filesystem label can be read.
func mayReuseConfigDrive(head []byte) bool {
	d := &headDisk{head}
	t, err := partition.Read(d)
	if err != nil {
		return false
	}
	for _, p := range t.Partitions {
		if strings.EqualFold(p.Name, "config-2") {
			return true
		}
	}
	return false
}

// headDisk is an image's first MiB seen as a small read-only disk.
type headDisk struct{ b []byte }

func (h *headDisk) ReadAt(p []byte, off int64) (int, error) {
	if off >= int64(len(h.b)) {
		return 0, io.EOF
	}
	n := copy(p, h.b[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}
func (h *headDisk) WriteAt([]byte, int64) (int, error) { return 0, errors.New("read-only") }
func (h *headDisk) Size() int64                        { return int64(len(h.b)) }
func (h *headDisk) SectorSize() int64 {
	if _, ss := partition.DetectSectorSize(h.b); ss != 0 {
		return ss
	}
	return 512
}

// fetch starts the download (the first step of the download stage).
func (dp *deployment) fetch(ctx context.Context) (*imaging.Stream, error) {
	var stream *imaging.Stream
	err := dp.step(ctx, job.StepDownload, func() error {
		fo := dp.Fetch
		fo.Headers = dp.job.Headers
		if fo.Logger == nil {
			fo.Logger = dp.log
		}
		if fo.OnBody == nil && dp.Alive != nil {
			fo.OnBody = func(int) { dp.Alive() }
		}
		if fo.OnRetry == nil {
			fo.OnRetry = func(retry, max int, off int64) {
				dp.warn(nil, job.StepDownload, job.WarnDownloadRetry, job.HumanBytes(off), retry, max)
			}
		}
		var err error
		stream, err = imaging.Fetch(ctx, dp.job.ImageURL, fo)
		return err
	})
	return stream, err
}

// verify compares the checksum of the downloaded bytes (no-op without one).
// verifyThenWrite is a streaming writer's Verify callback: the checksum
// (StepVerify), then the held-back regions (StepWrite); *step follows.
func (dp *deployment) verifyThenWrite(step *job.Step) func() error {
	return func() error {
		*step = job.StepVerify
		dp.begin(*step, "")
		if err := dp.verify(); err != nil {
			return err
		}
		*step = job.StepWrite
		dp.begin(*step, "writing the partition tables")
		return nil
	}
}

func (dp *deployment) verify() error {
	if dp.hash == nil {
		return nil
	}
	if err := imaging.VerifyChecksum(dp.job.ChecksumType, dp.job.Checksum, dp.hash); err != nil {
		return err
	}
	dp.res.Checksum = hex.EncodeToString(dp.hash.Sum(nil))
	dp.log.Info("checksum verified", "type", dp.job.ChecksumType)
	return nil
}

// wipe leaves the disk without a partition table after a failure past the
// point where it was touched, and returns the cause. The held regions are
// dropped; the disk itself is wiped only if anything reached it.
func (dp *deployment) wipe(ctx context.Context, cause error) error {
	dp.guard.Discard()
	if !dp.guard.Touched() {
		return cause
	}
	if werr := imaging.WipeAfterFailure(ctx, dp.real, dp.imageEnd); werr != nil {
		dp.log.Error("could not wipe the disk after a failure", logAttrsErr(werr))
		return errors.Join(cause, werr)
	}
	dp.log.Info("disk left without a partition table after the failure")
	return cause
}

// writeRaw streams a raw image onto the disk in one pass: download, hash
// and write overlap (StepDownload), then the checksum (StepVerify), then
// the held-back head and tail (StepWrite). WriteRaw wipes what it wrote on
// any failure.
func (dp *deployment) writeRaw(ctx context.Context, stream *imaging.Stream) error {
	step, download := job.StepDownload, dp.progress(job.StepDownload)
	// A raw image may arrive compressed (gzip, xz, zstd, bzip2): the
	// content decides. The checksum is of the bytes downloaded; WriteRaw
	// gets the decompressed stream (whose size is unknown: it refuses one
	// that passes the disk's end, a decompression bomb included).
	peek := make([]byte, 64<<10)
	n, err := io.ReadFull(stream, peek)
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
		return &stepError{step: step, err: err}
	}
	peek = peek[:n]
	var src io.Reader = io.MultiReader(bytes.NewReader(peek), stream)
	declared, hash := stream.Size(), dp.hash
	if f := imaging.Sniff(peek); imaging.Compressed(f) {
		if hash != nil {
			hash.Write(peek)
			src = io.TeeReader(stream, hash)
		} else {
			src = stream
		}
		dz, _, err := imaging.DecompressStream(peek, src)
		if err != nil {
			return &stepError{step: step, err: err}
		}
		defer dz.Close()
		src, declared, hash = dz, -1, nil
		dp.res.Compression = string(f)
		dp.log.Info("raw image is compressed: decompressing as it streams", "compression", f)
	} else if declared > 0 {
		dp.guard.Hold(declared-imaging.HeadSize, imaging.HeadSize)
	}
	var head []byte
	r, err := imaging.WriteRaw(ctx, src, dp.disk, imaging.RawOptions{
		DeclaredSize: declared,
		TargetName:   dp.real.Path(),
		Hash:         hash,
		Check: func(h []byte) error {
			head = h
			return dp.examineHead(ctx, h)
		},
		Ended: func(size int64) error {
			// Where the image ends is known now: its last MiB (its
			// backup GPT) stays in memory until the commit.
			dp.guard.Hold(size-imaging.HeadSize, imaging.HeadSize)
			if dp.hash == nil {
				// No checksum to catch a truncated download: the image's
				// own table says how far it must reach.
				if need := dp.verdict.MinImageSize(head, dp.real.SectorSize()); need > size {
					return &partition.TruncatedError{Got: size, Need: need}
				}
			}
			return nil
		},
		Verify: dp.verifyThenWrite(&step),
		Progress: func(done, total int64) {
			if step == job.StepDownload { // not WriteRaw's last call, after the head
				download(done, total)
			}
		},
		Logger: dp.log,
	})
	dp.res.ImageBytes, dp.res.DiskBytes = stream.BytesRead(), r.Written
	dp.imageEnd = r.Written
	if err != nil {
		dp.log.Error("step failed", "step", step, logAttrsErr(err))
		if dp.guard.Touched() {
			err = dp.wipe(ctx, err)
		}
		return &stepError{step: step, err: err}
	}
	return nil
}

// writeOVA streams an OVA's boot disk onto the disk in one pass (the VMDK
// grains inflated as they arrive): StepDownload, then the checksum and the
// manifest (StepVerify), then the held-back regions (StepWrite).
func (dp *deployment) writeOVA(ctx context.Context, stream *imaging.Stream) error {
	step, download := job.StepDownload, dp.progress(job.StepDownload)
	r, err := imaging.WriteOVA(ctx, stream, dp.disk, imaging.OVAOptions{
		DeclaredSize: stream.Size(),
		TargetName:   dp.real.Path(),
		Hash:         dp.hash,
		Check:        func(h []byte) error { return dp.examineHead(ctx, h) },
		Capacity: func(n int64) {
			// The disk's backup GPT stays in memory until the commit.
			dp.guard.Hold(n-imaging.HeadSize, imaging.HeadSize)
			dp.imageEnd = n
		},
		Verify: dp.verifyThenWrite(&step),
		Progress: func(done, total int64) {
			if step == job.StepDownload {
				download(done, total)
			}
		},
		Logger: dp.log,
	})
	dp.res.ImageBytes, dp.res.DiskBytes = r.Read, r.VirtualSize
	for _, w := range r.Warnings {
		dp.warn(dp.res, job.StepDownload, job.WarnImageNote, w)
	}
	if err != nil {
		dp.log.Error("step failed", "step", step, logAttrsErr(err))
		return &stepError{step: step, err: dp.wipe(ctx, err)}
	}
	return nil
}

// writeQcow2 stages the qcow2 (StepDownload), verifies its checksum, header
// and virtual disk head before the disk's image region is touched
// (StepVerify), then converts it onto the disk (StepWrite).
func (dp *deployment) writeQcow2(ctx context.Context, stream *imaging.Stream) error {
	var staged imaging.Staged
	// Staging may use the disk's tail (through the Guard, which clears the
	// old tables first): once it has, any failure must leave no partition
	// table. wipe touches the disk only if something reached it.
	failed := func(err error) error { return dp.wipe(ctx, err) }
	if err := dp.step(ctx, job.StepDownload, func() error {
		// The real format must be qcow2 before anything is staged.
		head := make([]byte, 64<<10)
		n, err := io.ReadFull(stream, head)
		if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
			return err
		}
		head = head[:n]
		if _, err := imaging.CheckFormat(job.ImageTypeQcow2, head); err != nil {
			return err
		}
		staged, err = imaging.Stage(ctx, io.MultiReader(bytes.NewReader(head), stream), imaging.StageOptions{
			DeclaredSize:  stream.Size(),
			MemoryReserve: dp.MemoryReserve,
			Target:        dp.disk,
			StagingDir:    dp.StagingDir,
			Hash:          dp.hash,
			Progress:      dp.progress(job.StepDownload),
			Logger:        dp.log,
		})
		return err
	}); err != nil {
		return failed(err)
	}
	defer staged.Close()
	dp.res.ImageBytes = staged.Size()
	dp.res.Staged = staged.Where()
	var info *imaging.Qcow2Info
	if err := dp.step(ctx, job.StepVerify, func() error {
		if err := dp.verify(); err != nil {
			return err
		}
		var err error
		info, err = imaging.CheckQcow2(staged, staged.Size(), dp.disk.Path(), dp.disk.Size())
		if err != nil {
			return err
		}
		head, err := readQcow2Head(staged, staged.Size(), info)
		if err != nil {
			return err
		}
		// The virtual disk's table decides, before converting: a qcow2
		// without one is refused like the same bytes as raw.
		return dp.examineHead(ctx, head)
	}); err != nil {
		return failed(err)
	}
	dp.res.DiskBytes = info.VirtualSize
	dp.guard.Hold(info.VirtualSize-imaging.HeadSize, imaging.HeadSize)
	if err := dp.step(ctx, job.StepWrite, func() error {
		dp.imageEnd = info.VirtualSize
		return imaging.ConvertQcow2(ctx, staged, staged.Size(), dp.disk, imaging.ConvertOptions{
			Progress: dp.progress(job.StepWrite),
			Logger:   dp.log,
		})
	}); err != nil {
		return dp.wipe(ctx, err)
	}
	return nil
}

// finishDisk is the tail every image type shares once the image is on the
// disk: relocate the backup GPT, check how it boots, add the ConfigDrive,
// flush and re-read. Any failure leaves the disk without a table.
func (dp *deployment) finishDisk(ctx context.Context) error {
	if err := dp.step(ctx, job.StepRelocate, func() error {
		if err := dp.repairHead(); err != nil {
			return err
		}
		return partition.RelocateBackupGPTFrom(ctx, dp.disk, dp.res.DiskBytes)
	}); err != nil {
		return dp.wipe(ctx, err)
	}
	if err := dp.step(ctx, job.StepBootCheck, dp.bootCheck); err != nil {
		return dp.wipe(ctx, err)
	}
	if dp.job.ConfigDrive != nil {
		if err := dp.step(ctx, job.StepConfigDrive, func() error {
			p, err := dp.addConfigDrive(ctx)
			if err != nil {
				return job.Wrap(err, job.ConfigDriveFailed)
			}
			dp.res.ConfigDrive = &p
			return nil
		}); err != nil {
			return dp.wipe(ctx, err)
		}
	}
	if err := dp.step(ctx, job.StepFinish, func() error { return dp.flush(ctx) }); err != nil {
		return dp.wipe(ctx, err)
	}
	return nil
}

// bootCheck reports how the deployed disk boots, and refuses a job whose
// efiBootloaderPath is not on the disk: the server's boot entry would point
// at nothing.
func (dp *deployment) bootCheck() error {
	t, err := partition.Read(dp.disk)
	if err != nil {
		return fmt.Errorf("read the partition table: %w", err)
	}
	b := InspectBoot(dp.disk, t, dp.job.EFIBootloaderPath)
	if p := dp.ServerEFIBootloaderPath; dp.job.EFIBootloaderPath == "" && p != "" && b.ESP != nil {
		if s := InspectBoot(dp.disk, t, p); s.BootloaderFound {
			b = s
		} else {
			dp.log.Info("the server's efiBootloaderPath is not on this image: the default loader path is used", "path", p)
		}
	}
	dp.res.Boot = &b
	for _, p := range b.Warnings {
		dp.warn(dp.res, job.StepBootCheck, p.Code, p.Args...)
	}
	if b.BootloaderProblem != nil {
		return b.BootloaderProblem
	}
	return nil
}

// repairHead applies the head verdict's repairs (a protective MBR that
// Linux would not accept) to the held first MiB, and reports them.
func (dp *deployment) repairHead() error {
	v := dp.verdict
	if v == nil || len(v.Repairs) == 0 {
		return nil
	}
	head := make([]byte, imaging.HeadSize)
	if _, err := dp.disk.ReadAt(head, 0); err != nil {
		return fmt.Errorf("read the image head: %w", err)
	}
	v.RepairHead(head, uint64(dp.real.Size()/dp.real.SectorSize()))
	if _, err := dp.disk.WriteAt(head[:512], 0); err != nil {
		return fmt.Errorf("repair the protective MBR: %w", err)
	}
	for _, r := range v.Repairs {
		dp.warn(dp.res, job.StepRelocate, job.WarnProtectiveMBR, r)
	}
	return nil
}

// flush commits the held tables (the Guard writes the backup GPT areas,
// then the first MiB, flushing in between), reads the final table back from
// the disk itself and asks the kernel to re-read it.
func (dp *deployment) flush(ctx context.Context) error {
	if err := dp.guard.Commit(ctx); err != nil {
		return &imaging.WriteError{Format: dp.job.ImageType, Err: err}
	}
	t, err := partition.Read(dp.real)
	if err != nil {
		return fmt.Errorf("read the final partition table: %w", err)
	}
	if t.FromBackup {
		return fmt.Errorf("the final partition table was read from its backup: %s", strings.Join(t.Problems, "; "))
	}
	dp.res.Table = t
	if rr, ok := dp.real.(rereader); ok {
		if err := rr.RereadPartitions(ctx); err != nil {
			// The table is on disk; only the running kernel has not
			// seen it. The reboot applies it.
			dp.log.Warn("partition table re-read", logAttrsErr(err))
			dp.warn(dp.res, job.StepFinish, job.WarnRereadDeferred)
		}
	}
	return nil
}

// addConfigDrive writes the config-2 filesystem built in preflight into a
// new partition at the end of the disk, or into the image's own config-2
// partition when it has one, and reads it back as cloud-init will.
func (dp *deployment) addConfigDrive(ctx context.Context) (partition.Partition, error) {
	disk, img := dp.disk, dp.cd
	p, found, err := partition.FindByLabel(disk, "config-2")
	if err != nil {
		return partition.Partition{}, err
	}
	if found {
		if int64(len(img)) > p.Size {
			return partition.Partition{}, fmt.Errorf("the image's config-2 partition holds %d bytes, the ConfigDrive needs %d", p.Size, len(img))
		}
		dp.log.Info("reusing the image's config-2 partition", "number", p.Number)
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
	if err := configdrive.Verify(io.NewSectionReader(disk, p.Start, int64(len(img))), int64(len(img)), dp.cdFormat, dp.cdUUID); err != nil {
		return partition.Partition{}, err
	}
	return p, nil
}
