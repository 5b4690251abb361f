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
	"sync"
	"time"

	"github.com/byoi/byoi/agentapi"
	"github.com/byoi/byoi/configdrive"
	"github.com/byoi/byoi/imagecheck"
	"github.com/byoi/byoi/imaging"
	"github.com/byoi/byoi/imaging/decompress"
	"github.com/byoi/byoi/imaging/fetch"
	"github.com/byoi/byoi/imaging/ova"
	"github.com/byoi/byoi/imaging/qcow2"
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

// Options are the settings of a deployment that Run's Env and a Deployer
// share.
type Options struct {
	Fetch         fetch.Options
	MemoryReserve int64  // qcow2 staging: memory kept free (default 1 GiB)
	StagingDir    string // qcow2 staging: a directory to use when memory and the disk tail do not fit
	// Qcow2Staging stages every qcow2 image whole before converting it:
	// no streaming conversion, even where the image's layout allows it.
	Qcow2Staging bool
	Logger       *slog.Logger
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
	// Inventory is the server's inventory (the one the agent posts): the
	// image checks' facts (its boot mode, the target disk's controller
	// driver, the NICs). Nil: unknown, and the checks that need them are
	// skipped.
	Inventory *agentapi.Inventory
	// Facts, when set, override the inventory's where they are given
	// (byoi deploy's --boot-mode, --disk-driver, --nic-driver).
	Facts *imagecheck.Facts
}

// Deployer writes one job onto an opened, locked disk: fetch, verify,
// write, relocate the backup GPT, check how it boots, add the ConfigDrive,
// flush. Run is the whole deployment (disk choice, locking, final status,
// reboot) around it; Deployer is its engine, usable on its own in tests.
// The zero value works: no events, default download settings.
type Deployer struct {
	Options
	// Events receives every event as the pipeline makes it (Run passes
	// them through its Sink). Nil drops them.
	Events func(job.Event)
	// Alive, when set, is called as image bytes arrive (Run passes its
	// Sink's Touch, for the watchdog). It must be cheap.
	Alive func()
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
	Staged      string               // where a qcow2 was staged ("" when it was streamed)
	Streamed    bool                 // a qcow2 converted as it streamed in (no staging)
	Boot        *BootReport          // how the deployed disk can boot
	Check       *imagecheck.Report   // the image checks' report (nil when off or not run)
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
	// Info: the warning event is what is shown (a Warn line would say it
	// twice on a terminal).
	d.logger().Info("warning", "step", step, "code", code, "msg", msg)
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

// tracker is the one place a deployment's steps start, end and fail
// (ignition's LogOp): run starts a step (its event), runs it, and logs its
// end or its failure with its duration, the failure tagged with the step
// it happened in. A writer whose one call spans several steps (raw and
// OVA images download, then verify, then flush) reports its phases, and
// next moves the tracker on.
type tracker struct {
	d *Deployer

	mu    sync.Mutex
	cur   job.Step
	start time.Time
}

// run runs fn as step name.
func (t *tracker) run(ctx context.Context, name job.Step, fn func() error) error {
	if err := ctx.Err(); err != nil {
		return &stepError{step: name, err: err}
	}
	t.begin(name, "")
	err := fn()
	step, start := t.current()
	if err != nil {
		var se *stepError
		if errors.As(err, &se) {
			step = se.step
		} else {
			err = &stepError{step: step, err: err}
		}
		t.d.logger().Error("step failed", "step", step, logAttrsErr(err), causeAttr(err), "elapsed", time.Since(start).Round(time.Millisecond))
		return err
	}
	t.done(step, start)
	return nil
}

// next ends the current step and starts name, inside one run: a writer's
// phase moved on. msg is the start event's message ("" for the step's
// own).
func (t *tracker) next(name job.Step, msg string) {
	step, start := t.current()
	t.done(step, start)
	t.begin(name, msg)
}

// step is the step running now.
func (t *tracker) step() job.Step {
	s, _ := t.current()
	return s
}

func (t *tracker) current() (job.Step, time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.cur, t.start
}

func (t *tracker) begin(name job.Step, msg string) {
	t.mu.Lock()
	t.cur, t.start = name, time.Now()
	t.mu.Unlock()
	t.d.logger().Info("step start", "step", name)
	e := job.Event{Step: name, Kind: job.KindInfo, Message: msg}
	if msg == "" {
		e.Message = stepMessages[name]
		if c, ok := stepCodes[name]; ok {
			e.Code, e.Message = c, job.Text(c)
		}
	}
	t.d.emit(e)
}

func (t *tracker) done(name job.Step, start time.Time) {
	t.d.logger().Info("step done", "step", name, "elapsed", time.Since(start).Round(time.Millisecond))
}

// stepError tags an error with the step it happened in. It is what the
// customer reads of its error (job.Coded): Describe's code and text, with
// the step known.
type stepError struct {
	step job.Step
	err  error
}

func (e *stepError) Error() string { _, m := describe(e.err, e.step); return m }
func (e *stepError) Unwrap() error { return e.err }

// MessageCode is Describe's code.
func (e *stepError) MessageCode() job.Code { c, _ := describe(e.err, e.step); return c }

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
	steps *tracker
	job   *job.Job
	real  Disk           // the disk itself
	guard *imaging.Guard // over real: the transaction, holding the table regions until the commit
	disk  Disk           // what the pipeline writes: the guard
	res   *Result
	log   *slog.Logger
	hash  hash.Hash // nil when no checksum is asked for
	// cd is the ConfigDrive, built in preflight (nil without one).
	cd       []byte
	cdFormat configdrive.Format
	cdUUID   string
	// verdict is the head's partition table verdict, once known.
	verdict *partition.Verdict
	// seen are the image checks' findings reported (imagecheck.go).
	seen map[string]bool
	// streamed: a qcow2 converted as it streams (qcow2.Stream): checked
	// like a raw image, its head before the first write, its filesystems
	// once written.
	streamed bool
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
// Deploy owns the crash-safety transaction: everything is written through
// one imaging.Guard (Begin), which holds the first MiB, the last MiB and
// the image's last MiB in memory and clears the old tables before the
// first byte reaches the disk; the last step commits it (the held regions
// last), and any failure aborts it, once, here (the disk left without a
// partition table). A crash at any point leaves either no table at all or
// the complete new system.
func (d *Deployer) Deploy(ctx context.Context, j *job.Job, disk Disk) (_ *Result, err error) {
	start := time.Now()
	g := imaging.Begin(ctx, disk)
	dp := &deployment{Deployer: d, steps: &tracker{d: d}, job: j.Clone(), real: disk, guard: g, disk: guardDisk{g}, log: d.logger()}
	dp.res = &Result{Disk: disk.Path()}
	defer func() {
		if err != nil {
			err = dp.abort(ctx, err)
		}
	}()
	if err := dp.preflight(ctx); err != nil {
		return nil, err
	}
	if err := dp.detectImageType(ctx); err != nil { // no type given: detect.go
		return nil, err
	}
	switch dp.job.ImageType {
	case job.ImageTypeRaw:
		err = dp.writeRaw(ctx)
	case job.ImageTypeQcow2:
		err = dp.writeQcow2(ctx)
	case job.ImageTypeOVA:
		err = dp.writeOVA(ctx)
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

// abort ends the transaction after a failure and returns the cause: the
// held regions are dropped and, if anything reached the disk, the disk is
// left without a partition table (Guard.Abort).
func (dp *deployment) abort(ctx context.Context, cause error) error {
	touched := dp.guard.Touched()
	if werr := dp.guard.Abort(ctx); werr != nil {
		dp.log.Error("could not wipe the disk after a failure", logAttrsErr(werr))
		return errors.Join(cause, werr)
	}
	if touched {
		dp.log.Info("disk left without a partition table after the failure")
	}
	return cause
}

// preflight validates the job and sets up the checksum.
func (dp *deployment) preflight(ctx context.Context) error {
	return dp.steps.run(ctx, job.StepPreflight, func() error {
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
		DHCPMACs:     dp.dhcpMACs(),
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
	if dp.job.ImageType != job.ImageTypeQcow2 || dp.streamed {
		// A streamed image: its boot mode is checked before the first
		// byte is written (a staged qcow2 is checked whole, in
		// writeQcow2).
		return dp.checkHead(head)
	}
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

// fetch starts the download, inside the download step: that step ends
// when the image's last byte arrived, not with the response headers.
func (dp *deployment) fetch(ctx context.Context) (*fetch.Stream, error) {
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
	dp.sourceEvents(&fo) // issue 28: the image cache's waits and fallback
	return fetch.Open(ctx, dp.job.ImageURL, fo)
}

// start is a writer's report that its checks passed and writing starts:
// the transaction clears the old tables now.
func (dp *deployment) start(ctx context.Context) func() error {
	return func() error { return dp.guard.Start(ctx) }
}

// ended is a streaming writer's report that the image has streamed in
// whole and is written but not flushed: the download step ends, the
// checksum is verified (StepVerify), and the writer flushes (StepWrite).
func (dp *deployment) ended() error {
	dp.steps.next(job.StepVerify, "")
	if err := dp.verify(); err != nil {
		return err
	}
	dp.steps.next(job.StepWrite, "flushing the image to the disk")
	return nil
}

// verify compares the checksum of the downloaded bytes (no-op without one).
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

// writeRaw streams a raw image onto the disk in one pass: download, hash
// and write overlap (StepDownload), then the checksum (StepVerify), then
// the flush (StepWrite), all in one WriteRaw whose phases the tracker
// follows.
func (dp *deployment) writeRaw(ctx context.Context) error {
	return dp.steps.run(ctx, job.StepDownload, func() error {
		stream, err := dp.fetch(ctx)
		if err != nil {
			return err
		}
		defer stream.Close()
		// A raw image may arrive compressed (gzip, xz, zstd, bzip2): the
		// content decides. The checksum is of the bytes downloaded;
		// WriteRaw gets the decompressed stream (whose size is unknown: it
		// refuses one that passes the disk's end, a decompression bomb
		// included).
		peek := make([]byte, 64<<10)
		n, err := io.ReadFull(stream, peek)
		if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
			return err
		}
		peek = peek[:n]
		var src io.Reader = io.MultiReader(bytes.NewReader(peek), stream)
		declared, hash := stream.Size(), dp.hash
		if f := imaging.Sniff(peek); decompress.Compressed(f) {
			if hash != nil {
				hash.Write(peek)
				src = io.TeeReader(stream, hash)
			} else {
				src = stream
			}
			dz, _, err := decompress.Stream(peek, src)
			if err != nil {
				return err
			}
			defer dz.Close()
			src, declared, hash = dz, -1, nil
			dp.res.Compression = string(f)
			dp.log.Info("raw image is compressed: decompressing as it streams", "compression", f)
			// Where the image ends is known only at its end: the Guard
			// holds the last MiB written until then.
			dp.guard.HoldEnd()
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
			Start: dp.start(ctx),
			Ended: func(size int64) error {
				// The image's last MiB (its backup GPT) stays in memory
				// until the commit.
				dp.guard.Hold(size-imaging.HeadSize, imaging.HeadSize)
				if dp.hash == nil {
					// No checksum to catch a truncated download: the
					// image's own table says how far it must reach.
					if need := dp.verdict.MinImageSize(head, dp.real.SectorSize()); need > size {
						return &partition.TruncatedError{Got: size, Need: need}
					}
				}
				return dp.ended()
			},
			Progress: dp.progress(job.StepDownload),
			Logger:   dp.log,
		})
		dp.res.ImageBytes, dp.res.DiskBytes = stream.BytesRead(), r.Written
		return err
	})
}

// writeOVA streams an OVA's boot disk onto the disk in one pass (the VMDK
// grains inflated as they arrive): StepDownload, then the checksum
// (StepVerify), then the flush (StepWrite), the phases of one ova.Write.
func (dp *deployment) writeOVA(ctx context.Context) error {
	return dp.steps.run(ctx, job.StepDownload, func() error {
		stream, err := dp.fetch(ctx)
		if err != nil {
			return err
		}
		defer stream.Close()
		r, err := ova.Write(ctx, stream, dp.disk, ova.Options{
			DeclaredSize: stream.Size(),
			TargetName:   dp.real.Path(),
			Hash:         dp.hash,
			Check:        func(h []byte) error { return dp.examineHead(ctx, h) },
			Capacity: func(n int64) {
				// The image's backup GPT stays in memory until the commit.
				dp.guard.Hold(n-imaging.HeadSize, imaging.HeadSize)
			},
			Start:    dp.start(ctx),
			Ended:    func(int64) error { return dp.ended() },
			Progress: dp.progress(job.StepDownload),
			Logger:   dp.log,
		})
		dp.res.ImageBytes, dp.res.DiskBytes = r.Read, r.VirtualSize
		for _, w := range r.Warnings {
			dp.warn(dp.res, job.StepDownload, job.WarnImageNote, w)
		}
		return err
	})
}

// writeQcow2 converts a qcow2 as it streams in when its layout allows
// (streamQcow2: one pass like a raw image, StepDownload, then StepVerify,
// then StepWrite's flush). Otherwise it stages the qcow2 (StepDownload),
// verifies its checksum, header and virtual disk before the disk's image
// region is touched (StepVerify), then converts it onto the disk
// (StepWrite). Staging may use the disk's tail, through the Guard: once it
// has, a failure leaves no partition table (Deploy's abort).
func (dp *deployment) writeQcow2(ctx context.Context) error {
	var staged qcow2.Staged
	if err := dp.steps.run(ctx, job.StepDownload, func() error {
		stream, err := dp.fetch(ctx)
		if err != nil {
			return err
		}
		defer stream.Close()
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
		src := io.MultiReader(bytes.NewReader(head), stream)
		hash := dp.hash
		if dp.Qcow2Staging {
			dp.log.Info("qcow2: staging (asked for)")
		} else {
			stage, replay, err := dp.streamQcow2(ctx, src, stream.Size())
			dp.res.ImageBytes = stream.BytesRead()
			if err != nil || !stage {
				return err
			}
			// Not streamable, nothing written: the bytes read so far
			// (hashed already) and the rest of the stream are staged.
			rest := io.Reader(stream)
			if hash != nil {
				rest = io.TeeReader(stream, hash)
			}
			src, hash = io.MultiReader(bytes.NewReader(replay), rest), nil
		}
		staged, err = qcow2.Stage(ctx, src, qcow2.StageOptions{
			DeclaredSize:  stream.Size(),
			MemoryReserve: dp.MemoryReserve,
			Target:        dp.disk,
			StagingDir:    dp.StagingDir,
			Hash:          hash,
			Progress:      dp.progress(job.StepDownload),
			Logger:        dp.log,
		})
		return err
	}); err != nil {
		return err
	}
	if dp.streamed {
		return nil
	}
	defer staged.Close()
	dp.res.ImageBytes = staged.Size()
	dp.res.Staged = staged.Where()
	var info *qcow2.Info
	if err := dp.steps.run(ctx, job.StepVerify, func() error {
		if err := dp.verify(); err != nil {
			return err
		}
		var err error
		info, err = qcow2.Check(staged, staged.Size(), dp.disk.Path(), dp.disk.Size())
		if err != nil {
			return err
		}
		head, err := readQcow2Head(staged, staged.Size(), info)
		if err != nil {
			return err
		}
		// The virtual disk's table decides, before converting: a qcow2
		// without one is refused like the same bytes as raw.
		if err := dp.examineHead(ctx, head); err != nil {
			return err
		}
		// Every image check, on the staged image, before the disk's
		// image region is touched.
		vd, closeVD, err := qcow2.OpenDisk(staged, staged.Size(), info)
		if err != nil {
			return err
		}
		defer closeVD()
		return dp.checkDisk(ctx, job.StepVerify, vd, info.VirtualSize, false)
	}); err != nil {
		return err
	}
	dp.res.DiskBytes = info.VirtualSize
	dp.guard.Hold(info.VirtualSize-imaging.HeadSize, imaging.HeadSize)
	return dp.steps.run(ctx, job.StepWrite, func() error {
		return qcow2.Convert(ctx, staged, staged.Size(), info, dp.disk, qcow2.ConvertOptions{
			KeepOut:  staged.Region(),
			Start:    dp.start(ctx),
			Progress: dp.progress(job.StepWrite),
			Logger:   dp.log,
		})
	})
}

// streamQcow2 converts the qcow2 src (size bytes, -1 unknown) as it
// streams in (qcow2.Stream), inside the download step: its header and
// the virtual disk's first MiB are checked before anything is written
// (examineHead, the boot mode included), the checksum once it streamed in
// (StepVerify), then the flush (StepWrite). When the image's layout does
// not allow streaming it returns the bytes read so far (every one given to
// the hash) and stage, nothing written: the caller stages them and the
// rest.
// The log says which path was taken.
func (dp *deployment) streamQcow2(ctx context.Context, src io.Reader, size int64) (stage bool, replay []byte, err error) {
	res, err := qcow2.Stream(ctx, src, dp.disk, qcow2.StreamOptions{
		DeclaredSize: size,
		TargetName:   dp.real.Path(),
		Hash:         dp.hash,
		Head: func(head []byte, info *qcow2.Info) error {
			dp.streamed = true
			if err := dp.examineHead(ctx, head); err != nil {
				return err
			}
			// The image's own backup GPT stays in memory until the
			// commit.
			dp.guard.Hold(info.VirtualSize-imaging.HeadSize, imaging.HeadSize)
			dp.res.DiskBytes = info.VirtualSize
			return nil
		},
		Start:    dp.start(ctx),
		Ended:    func(int64) error { return dp.ended() },
		Progress: dp.progress(job.StepDownload),
		Logger:   dp.log,
	})
	var ns *qcow2.NotStreamableError
	if errors.As(err, &ns) {
		dp.streamed = false
		dp.log.Info(ns.Error(), "offset", ns.Offset, "reason", ns.Reason)
		return true, ns.Replay, nil
	}
	if err != nil {
		return false, nil, err
	}
	dp.res.Streamed = true
	if res.Info != nil {
		dp.res.DiskBytes = res.Info.VirtualSize
	}
	return false, nil, nil
}

// finishDisk is the tail every image type shares once the image is on the
// disk: relocate the backup GPT, check how it boots, add the ConfigDrive,
// commit and re-read. A failure aborts the transaction (Deploy).
func (dp *deployment) finishDisk(ctx context.Context) error {
	if err := dp.steps.run(ctx, job.StepRelocate, func() error {
		if err := dp.repairHead(); err != nil {
			return err
		}
		return partition.RelocateBackupGPTFrom(ctx, dp.disk, dp.res.DiskBytes)
	}); err != nil {
		return err
	}
	if err := dp.steps.run(ctx, job.StepBootCheck, func() error {
		if dp.job.ImageType != job.ImageTypeQcow2 || dp.streamed {
			// A streamed image is checked once written, before the
			// commit: the held regions read through the Guard.
			if err := dp.checkDisk(ctx, job.StepBootCheck, dp.disk, dp.disk.Size(), true); err != nil {
				return err
			}
		}
		return dp.bootCheck()
	}); err != nil {
		return err
	}
	if dp.job.ConfigDrive != nil {
		if err := dp.steps.run(ctx, job.StepConfigDrive, func() error {
			p, err := dp.addConfigDrive(ctx)
			if err != nil {
				return job.Wrap(err, job.ConfigDriveFailed)
			}
			dp.res.ConfigDrive = &p
			return nil
		}); err != nil {
			return err
		}
	}
	return dp.steps.run(ctx, job.StepFinish, func() error { return dp.flush(ctx) })
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
	known := dp.checking() && dp.facts().BootMode != ""
	for _, p := range b.Warnings {
		if known && bootModeWarning[p.Code] {
			// The image checks judged the boot against the server's
			// own boot mode: these are for a server of unknown mode.
			continue
		}
		dp.warn(dp.res, job.StepBootCheck, p.Code, p.Args...)
	}
	if b.BootloaderProblem != nil {
		return b.BootloaderProblem
	}
	return nil
}

// bootModeWarning are InspectBoot's warnings that hold for a server whose
// boot mode is unknown.
var bootModeWarning = map[job.Code]bool{
	job.WarnNoLegacyBoot: true, job.WarnNoESP: true, job.WarnESPUnreadable: true, job.WarnNoRemovablePath: true,
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

// flush commits the transaction (the Guard writes the backup GPT areas,
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
