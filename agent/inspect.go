package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/byoi/byoi/imagecheck"
	"github.com/byoi/byoi/imaging"
	"github.com/byoi/byoi/imaging/decompress"
	"github.com/byoi/byoi/imaging/qcow2"
	"github.com/byoi/byoi/job"
	"github.com/byoi/byoi/partition"
)

// InspectOptions describe the deployment an image is inspected for. Zero
// values mean unknown: the checks that need them are skipped.
type InspectOptions struct {
	// EFIBootloaderPath is the job's efiBootloaderPath, looked up in the
	// image's EFI System Partition when given.
	EFIBootloaderPath string
	// DiskSize is the target disk's size in bytes (0: no fit check).
	DiskSize int64
	// DiskSectorSize is the target disk's logical sector size (0: no
	// sector size check; otherwise 512, 1024, 2048 or 4096).
	DiskSectorSize int64
	// DeclaredType is the job's image type, "raw" or "qcow2" ("": none;
	// then the image must only be one of the two).
	DeclaredType string
	// ConfigDrive: the job has a ConfigDrive; with DiskSize, check it will
	// have room on the disk (a free MiB at its end, a free MBR slot).
	ConfigDrive bool
	// Facts are the server's, for the image checks (issue 26): its boot
	// mode, its disk's and NICs' drivers. Zero values mean unknown (the
	// checks that need them are skipped). ConfigDrive and
	// EFIBootloaderPath are taken from the fields above.
	Facts imagecheck.Facts
	// NoChecks skips the image checks.
	NoChecks bool
}

// InspectReport is what Inspect found. Problems lists, with the messages a
// deployment would give, every reason a deploy of this image would fail or
// the server would not boot it; an empty list means none was found.
type InspectReport struct {
	// Format is the image's real format (imaging.Sniff on its first MiB).
	Format       string `json:"format"`
	DeclaredType string `json:"declaredType,omitempty"`
	// FileSize is the size of the image as given (downloaded) in bytes.
	FileSize int64 `json:"fileSize"`
	// VirtualSize is the bytes the image covers on a disk: the file size
	// of a raw image, the virtual size of a qcow2 (0 when unknown).
	VirtualSize int64         `json:"virtualSize"`
	Qcow2       *Qcow2Summary `json:"qcow2,omitempty"`
	OVA         *OVASummary   `json:"ova,omitempty"`
	// Compression is a raw image's compression (gzip, xz, zstd, bzip2):
	// its head was decompressed to read the partition table; the size on
	// disk is known only once it is deployed.
	Compression string `json:"compression,omitempty"`
	// SectorSize is the logical sector size the image's partition table
	// was made for (0 when it cannot tell, e.g. an MBR).
	SectorSize int64         `json:"sectorSize"`
	Table      *TableSummary `json:"table,omitempty"`
	Boot       *BootSummary  `json:"boot,omitempty"`
	// Checks is the image checks' report (imagecheck): the image's own
	// system against the server's facts. Its refusals are in Problems
	// too.
	Checks   *imagecheck.Report `json:"checks,omitempty"`
	Problems []string           `json:"problems"`
}

// Qcow2Summary is what the qcow2 header says, and whether byoi accepts it.
type Qcow2Summary struct {
	Version     int    `json:"version"`
	ClusterSize int64  `json:"clusterSize"`
	Compression string `json:"compression"`
	VirtualSize int64  `json:"virtualSize"`
	// Features names the feature bits and header properties set: "dirty",
	// "corrupt", "external data file", "compression type", "extended L2",
	// "lazy refcounts", "bitmaps", "raw external data", "backing file",
	// "encrypted", and unknown bits as "incompatible bit N" etc.
	Features  []string `json:"features"`
	Snapshots uint32   `json:"snapshots"`
	// AllocatedClusters and CompressedClusters are counted by qcow2.Check
	// (0 when it refused the image).
	AllocatedClusters  int64 `json:"allocatedClusters"`
	CompressedClusters int64 `json:"compressedClusters"`
	// Accepted is true when qcow2.Check accepted the image;
	// Refused then is empty, else it is qcow2.Check's message.
	Accepted bool   `json:"accepted"`
	Refused  string `json:"refused,omitempty"`
}

// TableSummary is the image's partition table (of the virtual disk for a
// qcow2).
type TableSummary struct {
	Type       string             `json:"type"` // gpt or mbr
	SectorSize int64              `json:"sectorSize"`
	DiskGUID   string             `json:"diskGuid,omitempty"`
	FromBackup bool               `json:"fromBackup,omitempty"`
	Partitions []PartitionSummary `json:"partitions"`
	Problems   []string           `json:"problems,omitempty"`
}

// PartitionSummary is one partition; Start and Size are in bytes.
type PartitionSummary struct {
	Number   int    `json:"number"`
	Start    int64  `json:"start"`
	Size     int64  `json:"size"`
	TypeGUID string `json:"typeGuid,omitempty"`
	MBRType  string `json:"mbrType,omitempty"`
	TypeName string `json:"typeName"`
	Name     string `json:"name,omitempty"`
	Bootable bool   `json:"bootable,omitempty"`
}

// BootSummary is InspectBoot's result.
type BootSummary struct {
	ESP             bool     `json:"esp"`
	ESPPartition    int      `json:"espPartition,omitempty"`
	ESPFilesystem   string   `json:"espFilesystem,omitempty"`
	RemovablePath   bool     `json:"removablePath"`
	BootloaderPath  string   `json:"bootloaderPath,omitempty"`
	BootloaderFound bool     `json:"bootloaderFound"`
	Legacy          bool     `json:"legacyBootable"`
	LegacySigns     []string `json:"legacySigns"`
	Problems        []string `json:"problems,omitempty"`
}

// errReadOnly is what readOnlyDisk answers to a write: inspect writes
// nothing, and this makes sure of it.
var errReadOnly = errors.New("inspect: the image is read-only")

// readOnlyDisk presents an image (or a qcow2's virtual disk) as a
// partition.Disk whose writes fail.
type readOnlyDisk struct {
	r      io.ReaderAt
	size   int64
	sector int64
}

func (d readOnlyDisk) ReadAt(p []byte, off int64) (int, error) { return d.r.ReadAt(p, off) }
func (d readOnlyDisk) WriteAt([]byte, int64) (int, error)      { return 0, errReadOnly }
func (d readOnlyDisk) Size() int64                             { return d.size }
func (d readOnlyDisk) SectorSize() int64                       { return d.sector }

// InspectImage reads an image of size bytes from src and reports what a deploy
// would do with it, without writing anything: its real format, the qcow2
// header and safety checks, the partition table, how it boots, and every
// problem that would make a deploy fail or the server not boot (in
// Problems, with the deployment's messages).
//
// A qcow2 image's virtual disk is read (through go-qcow2reader, with no
// backing-file opener) only after qcow2.Check accepted it. Memory
// stays bounded: the head is 1 MiB, qcow2.Check and the FAT reader bound
// their own reads.
//
// The error is non-nil only when the image cannot be read at all (an I/O
// error, a cancelled ctx) or opts are invalid; what is wrong with the image
// itself is data, in the report.
func InspectImage(ctx context.Context, src io.ReaderAt, size int64, opts InspectOptions) (*InspectReport, error) {
	if size < 0 {
		return nil, fmt.Errorf("inspect: negative image size %d", size)
	}
	if ss := opts.DiskSectorSize; ss != 0 && ss != 512 && ss != 1024 && ss != 2048 && ss != 4096 {
		return nil, fmt.Errorf("inspect: disk sector size %d is not supported (512, 1024, 2048 or 4096)", ss)
	}
	if t := opts.DeclaredType; t != "" && t != "raw" && t != "qcow2" && t != "ova" {
		return nil, fmt.Errorf("inspect: declared type %q is not raw, qcow2 or ova", t)
	}
	if opts.DiskSize < 0 {
		return nil, fmt.Errorf("inspect: negative disk size %d", opts.DiskSize)
	}
	src = io.NewSectionReader(src, 0, size)
	head, err := readHead(src, size)
	if err != nil {
		return nil, err
	}
	rep := &InspectReport{
		Format:       string(imaging.Sniff(head)),
		DeclaredType: opts.DeclaredType,
		FileSize:     size,
		Problems:     []string{},
	}

	// A compressed raw image: read the partition table from its
	// decompressed head.
	if f := imaging.Format(rep.Format); decompress.Compressed(f) && opts.DeclaredType != "qcow2" && opts.DeclaredType != "ova" {
		dz, _, err := decompress.Stream(head, io.NewSectionReader(src, int64(len(head)), size-int64(len(head))))
		if err != nil {
			rep.problem(err)
			return rep, nil
		}
		defer dz.Close()
		dhead := make([]byte, imaging.HeadSize)
		n, err := io.ReadFull(dz, dhead)
		if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) {
			rep.problem(err)
			return rep, nil
		}
		rep.Compression, head = rep.Format, dhead[:n]
		if _, err := imaging.CheckFormat("raw", head); err != nil {
			rep.problem(err)
			return rep, nil
		}
		rep.inspectHeadOnly(ctx, head, opts)
		return rep, nil
	}

	// The format, as the deployment's format check words it. Without a
	// declared type the image must be one of the types byoi takes.
	switch {
	case opts.DeclaredType == "ova":
		if imaging.Format(rep.Format) != imaging.FormatTar {
			rep.problem(&imaging.FormatError{Declared: "ova", Found: imaging.Format(rep.Format)})
		}
	case opts.DeclaredType != "":
		if _, err := imaging.CheckFormat(opts.DeclaredType, head); err != nil {
			rep.problem(err)
		}
	case rep.Format != string(imaging.FormatQcow2) && rep.Format != string(imaging.FormatTar):
		if _, err := imaging.CheckFormat("raw", head); err != nil {
			rep.problem(err)
		}
	}
	if imaging.Format(rep.Format) == imaging.FormatTar {
		rep.inspectOVA(src, size, opts)
		if !opts.NoChecks {
			rep.Checks = &imagecheck.Report{Filesystems: []imagecheck.Filesystem{}, Findings: []imagecheck.Finding{
				note("the OVA's disk", "an OVA's disk is a stream of VMDK grains: its filesystems are checked when it is deployed, once written"),
			}}
		}
		if opts.DiskSize > 0 && rep.VirtualSize > opts.DiskSize {
			rep.problem(&imaging.SizeError{ImageSize: rep.VirtualSize, TargetSize: opts.DiskSize})
		}
		return rep, nil
	}

	var disk io.ReaderAt // the disk the image becomes
	switch imaging.Format(rep.Format) {
	case imaging.FormatRaw:
		disk = src
		rep.VirtualSize = size
	case imaging.FormatQcow2:
		vd, closeVD, err := rep.inspectQcow2(ctx, src, size, head)
		if err != nil {
			return nil, err
		}
		if vd == nil {
			break
		}
		defer closeVD()
		disk = io.NewSectionReader(vd, 0, rep.VirtualSize)
		vhead, err := readHead(disk, rep.VirtualSize)
		if err != nil {
			return nil, fmt.Errorf("inspect: qcow2 virtual disk: %w", err)
		}
		if _, ok := imaging.HasPartitionTable(vhead); !ok {
			e := &imaging.FormatError{Declared: "raw", Found: imaging.Sniff(vhead), NoTable: true}
			rep.Problems = append(rep.Problems, Message(e))
			disk = nil
		}
		head = vhead
	}
	if opts.DiskSize > 0 && rep.VirtualSize > opts.DiskSize {
		rep.problem(&imaging.SizeError{ImageSize: rep.VirtualSize, TargetSize: opts.DiskSize})
	}
	if disk == nil {
		return rep, nil
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("inspect: %w", err)
	}
	rep.inspectDisk(disk, head, opts)
	if err := rep.check(ctx, disk, head, opts); err != nil {
		return nil, err
	}
	if opts.ConfigDrive && opts.DiskSize > 0 {
		ss := opts.DiskSectorSize
		if ss == 0 {
			ss = max(rep.SectorSize, 512)
		}
		// The same dry run a deployment makes before writing.
		if err := partition.CheckRoom(ctx, head, opts.DiskSize, ss, 1<<20); err != nil && !mayReuseConfigDrive(head) {
			rep.problem(job.Wrap(err, job.ConfigDriveFailed))
		}
	}
	return rep, nil
}

// readHead reads the first MiB (or less) of r.
func readHead(r io.ReaderAt, size int64) ([]byte, error) {
	head := make([]byte, min(size, imaging.HeadSize))
	if n, err := r.ReadAt(head, 0); n != len(head) {
		if err == nil || errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return nil, fmt.Errorf("inspect: read the first %d bytes: %w", len(head), err)
	}
	return head, nil
}

func (r *InspectReport) problem(err error) { r.Problems = append(r.Problems, Message(err)) }

// inspectQcow2 fills the qcow2 summary and, when qcow2.Check accepts the
// image, opens its virtual disk (nil when refused).
func (r *InspectReport) inspectQcow2(ctx context.Context, src io.ReaderAt, size int64, head []byte) (io.ReaderAt, func(), error) {
	s := &Qcow2Summary{Features: []string{}}
	r.Qcow2 = s
	info, err := qcow2.ParseHeader(head)
	if err != nil {
		s.Refused = Message(err)
		r.Problems = append(r.Problems, s.Refused)
		return nil, nil, nil
	}
	s.Version, s.ClusterSize, s.Compression = info.Version, info.ClusterSize, info.Compression
	s.VirtualSize, s.Snapshots = info.VirtualSize, info.NbSnapshots
	s.Features = qcow2Features(info)
	r.VirtualSize = info.VirtualSize
	if err := ctx.Err(); err != nil {
		return nil, nil, fmt.Errorf("inspect: %w", err)
	}
	// The size check is Inspect's, against opts.DiskSize, so that a
	// qcow2 too large for the disk is still inspected.
	checked, err := qcow2.Check(src, size, "", 0)
	if err != nil {
		var qe *qcow2.Error
		if !errors.As(err, &qe) {
			return nil, nil, fmt.Errorf("inspect: %w", err) // I/O
		}
		s.Refused = Message(err)
		r.Problems = append(r.Problems, s.Refused)
		return nil, nil, nil
	}
	s.Accepted = true
	s.AllocatedClusters, s.CompressedClusters = checked.AllocatedClusters, checked.CompressedClusters
	// qcow2.Check accepted it: no backing file, and the nil opener would
	// refuse to open one anyway.
	vd, closeVD, err := qcow2.OpenDisk(src, size, info)
	if err != nil {
		s.Accepted = false
		s.Refused = Message(err)
		r.Problems = append(r.Problems, s.Refused)
		return nil, nil, nil
	}
	return vd, func() { closeVD() }, nil
}

// tableSummary is a table as the report shows it.
func tableSummary(t *partition.Table) *TableSummary {
	ts := &TableSummary{Type: t.Type, SectorSize: t.SectorSize, DiskGUID: t.DiskGUID, FromBackup: t.FromBackup,
		Partitions: []PartitionSummary{}, Problems: t.Problems}
	for _, p := range t.Partitions {
		ps := PartitionSummary{Number: p.Number, Start: p.Start, Size: p.Size, TypeGUID: p.TypeGUID, TypeName: p.TypeName, Name: p.Name, Bootable: p.Bootable}
		if t.Type == "mbr" {
			ps.MBRType = fmt.Sprintf("0x%02x", p.MBRType)
		}
		ts.Partitions = append(ts.Partitions, ps)
	}
	return ts
}

// qcow2Features names what the header sets (qcow2 spec, "feature bits").
func qcow2Features(info *qcow2.Info) []string {
	f := []string{}
	if info.HasBackingFile {
		f = append(f, "backing file")
	}
	if info.CryptMethod != 0 {
		f = append(f, fmt.Sprintf("encrypted (method %d)", info.CryptMethod))
	}
	names := func(bits uint64, kind string, known []string) {
		for i := 0; i < 64; i++ {
			if bits&(1<<i) == 0 {
				continue
			}
			if i < len(known) {
				f = append(f, known[i])
			} else {
				f = append(f, fmt.Sprintf("%s bit %d", kind, i))
			}
		}
	}
	names(info.IncompatibleFeatures, "incompatible", []string{"dirty", "corrupt", "external data file", "compression type", "extended L2"})
	names(info.CompatibleFeatures, "compatible", []string{"lazy refcounts"})
	names(info.AutoclearFeatures, "autoclear", []string{"bitmaps", "raw external data"})
	return f
}

// sectorSize notes the sector size the image's head was made for (and a
// mismatch with the disk's), and returns the one to read its table with:
// its own; for an MBR (or a GPT of unknown sector size) the disk's, else 512.
func (r *InspectReport) sectorSize(head []byte, opts InspectOptions) int64 {
	_, ss := partition.DetectSectorSize(head)
	r.SectorSize = ss
	if opts.DiskSectorSize != 0 {
		if err := partition.CheckSectorSize(head, opts.DiskSectorSize); err != nil {
			r.problem(err)
		}
	}
	if ss == 0 {
		ss = max(opts.DiskSectorSize, 512)
	}
	return ss
}

// inspectDisk reads the partition table and the boot setup of the disk the
// image becomes.
func (r *InspectReport) inspectDisk(disk io.ReaderAt, head []byte, opts InspectOptions) {
	ss := r.sectorSize(head, opts)
	d := readOnlyDisk{r: disk, size: r.VirtualSize, sector: ss}
	t, err := partition.Read(d)
	if err != nil {
		r.Problems = append(r.Problems, fmt.Sprintf("the partition table cannot be read: %v", err))
		return
	}
	r.Table = tableSummary(t)
	for _, p := range t.Problems {
		r.Problems = append(r.Problems, "partition table: "+p)
	}

	b := InspectBoot(d, t, opts.EFIBootloaderPath)
	bs := &BootSummary{
		ESP: b.ESP != nil, ESPFilesystem: b.ESPFilesystem, RemovablePath: b.RemovablePath,
		BootloaderPath: b.BootloaderPath, BootloaderFound: b.BootloaderFound,
		Legacy: b.Legacy, LegacySigns: b.LegacySigns, Problems: b.Problems,
	}
	if bs.LegacySigns == nil {
		bs.LegacySigns = []string{}
	}
	if b.ESP != nil {
		bs.ESPPartition = b.ESP.Number
	}
	r.Boot = bs
	skip := map[string]bool{}
	if !opts.NoChecks && opts.Facts.BootMode != "" {
		// The image checks judge the boot against the server's own
		// mode: the warnings for a server of unknown mode are not said.
		for _, w := range b.Warnings {
			if bootModeWarning[w.Code] {
				skip[job.Text(w.Code, w.Args...)] = true
			}
		}
	}
	for _, p := range b.Problems {
		if !skip[p] {
			r.Problems = append(r.Problems, p)
		}
	}
}

// inspectHeadOnly reads what the first MiB of a disk tells (the table,
// its sector size) when the rest cannot be read at random (a compressed
// image): the partition table from the head, no boot check.
func (r *InspectReport) inspectHeadOnly(ctx context.Context, head []byte, opts InspectOptions) {
	ss := r.sectorSize(head, opts)
	hd := &headDisk{head}
	if t, err := partition.Read(readOnlyDisk{r: hd, size: int64(len(head)), sector: ss}); err == nil {
		r.Table = tableSummary(t)
	}
	if !opts.NoChecks {
		// A stream: the first MiB tells the boot mode's verdict; the
		// filesystems are beyond the bound.
		r.Checks = &imagecheck.Report{Filesystems: []imagecheck.Filesystem{}, Findings: []imagecheck.Finding{}}
		if fs, err := imagecheck.CheckHead(head, ss, r.facts(opts)); err == nil {
			r.addFindings(fs)
		}
		r.Checks.Findings = append(r.Checks.Findings, note("the image's filesystems",
			fmt.Sprintf("a compressed raw image is read as a stream, and only its first %s were read (they are checked when it is deployed, once written)", job.HumanBytes(int64(len(head))))))
	}
	if opts.ConfigDrive && opts.DiskSize > 0 {
		if err := partition.CheckRoom(ctx, head, opts.DiskSize, max(opts.DiskSectorSize, ss), 1<<20); err != nil && !mayReuseConfigDrive(head) {
			r.problem(job.Wrap(err, job.ConfigDriveFailed))
		}
	}
}

// note is a Note finding: what was not examined, and why.
func note(what, why string) imagecheck.Finding {
	return imagecheck.Finding{Code: job.CheckNotExamined, Severity: imagecheck.Note, Message: job.Text(job.CheckNotExamined, what, why), Args: []any{what, why}}
}

// facts are the image checks' facts for opts.
func (r *InspectReport) facts(opts InspectOptions) imagecheck.Facts {
	f := opts.Facts
	f.ConfigDrive = opts.ConfigDrive
	f.EFIBootloaderPath = opts.EFIBootloaderPath
	return f
}

// check runs the image checks on the disk the image becomes.
func (r *InspectReport) check(ctx context.Context, disk io.ReaderAt, head []byte, opts InspectOptions) error {
	if opts.NoChecks {
		return nil
	}
	ss := r.SectorSize
	if ss == 0 {
		ss = max(opts.DiskSectorSize, 512)
	}
	rep, err := imagecheck.Check(ctx, disk, r.VirtualSize, ss, r.facts(opts), imagecheck.Options{})
	if err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("inspect: %w", ctx.Err())
		}
		r.Checks = &imagecheck.Report{Filesystems: []imagecheck.Filesystem{}, Findings: []imagecheck.Finding{note("the image's system", err.Error())}}
		return nil
	}
	fs := rep.Findings
	rep.Findings = []imagecheck.Finding{}
	r.Checks = rep
	r.addFindings(fs)
	return nil
}

// addFindings adds findings to the report: refusals are problems too.
func (r *InspectReport) addFindings(fs []imagecheck.Finding) {
	for _, f := range fs {
		r.Checks.Findings = append(r.Checks.Findings, f)
		if f.Severity == imagecheck.Refuse {
			r.Problems = append(r.Problems, f.Message)
		}
	}
}

// HasProblems reports whether the image would fail to deploy or boot.
func (r *InspectReport) HasProblems() bool { return len(r.Problems) > 0 }

// String is a one-line summary (for logs).
func (r *InspectReport) String() string {
	return fmt.Sprintf("%s image, %d bytes on disk, %d problems: %s", r.Format, r.VirtualSize, len(r.Problems), strings.Join(r.Problems, "; "))
}
