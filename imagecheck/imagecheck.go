// Package imagecheck tells, before a server is erased, whether the image
// will boot and come up on it (issue 26): it opens the image's filesystems
// read-only (ext2/3/4, XFS and FAT through imagecheck/vfs; anything else is
// "not examined", never a failure), and checks the image's own system
// against the server's facts: how the server boots (an EFI System
// Partition with a loader, BIOS boot code), the root filesystem and
// /etc/fstab, the kernel of the default boot entry and its initramfs (the
// disk controller's driver and the root filesystem's module in it or built
// in, the network drivers in /lib/modules), cloud-init when a ConfigDrive
// is requested, and network configuration bound to names or MAC addresses
// this server cannot have.
//
// Each Finding has a catalog code (job/catalog.go, issue 26), a severity
// and the file it comes from. Refuse means the server will not boot the
// image (or not reach its network) as it is; Warn a likely failure; Note
// what was not examined.
//
// Everything read goes through a vfs.Reader: bounded in bytes, cached in
// 64 KiB blocks (few, larger reads of the source: an HTTP Range reader
// does well under it), stopped by the context. A panic in a check is
// recovered and becomes a Note.
package imagecheck

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/byoi/byoi/imagecheck/vfs"
	"github.com/byoi/byoi/job"
	"github.com/byoi/byoi/partition"
)

// Severity is how bad a finding is.
type Severity string

const (
	// Refuse: the server will not boot this image, or not reach it.
	Refuse Severity = "refuse"
	// Warn: the image will likely misbehave on this server.
	Warn Severity = "warn"
	// Note: something was not examined.
	Note Severity = "note"
)

// Boot modes, as the agent's inventory says them (agentapi.BootMode*).
const (
	BootLegacy = "legacy"
	BootUEFI   = "uefi"
)

// NIC is one network interface of the server.
type NIC struct {
	Name   string `json:"name,omitempty"`   // in the rescue system (informative)
	MAC    string `json:"mac,omitempty"`    // aa:bb:cc:dd:ee:ff
	Driver string `json:"driver,omitempty"` // kernel module bound to it (e1000e, ixgbe, mlx5_core)
}

// Facts are what is known of the server. Zero values mean unknown: the
// checks that need them are skipped.
type Facts struct {
	// BootMode is how the rescue system booted: BootUEFI or BootLegacy.
	BootMode string `json:"bootMode,omitempty"`
	// DiskDrivers are the kernel modules the target disk needs: the
	// driver bound to its controller (nvme, ahci, megaraid_sas, mpt3sas,
	// virtio_blk...). "-" and "_" are the same. For controllers whose
	// disks are SCSI disks (anything but nvme, virtio_blk, xen_blkfront,
	// mmc), sd_mod is needed too and is added.
	DiskDrivers []string `json:"diskDrivers,omitempty"`
	NICs        []NIC    `json:"nics,omitempty"`
	// ConfigDrive: the job writes a ConfigDrive, which cloud-init must read.
	ConfigDrive bool `json:"configDrive,omitempty"`
	// EFIBootloaderPath is the job's efiBootloaderPath, when given.
	EFIBootloaderPath string `json:"efiBootloaderPath,omitempty"`
}

// Finding is one result of the checks.
type Finding struct {
	Code     job.Code `json:"code"`
	Severity Severity `json:"severity"`
	// File is where it comes from: a path in the image's system
	// ("/etc/fstab"), or "partition N" for the table and the ESP.
	File    string `json:"file,omitempty"`
	Line    int    `json:"line,omitempty"`
	Message string `json:"message"`
	Args    []any  `json:"-"`
}

func (f Finding) String() string {
	where := f.File
	if f.Line > 0 {
		where = fmt.Sprintf("%s:%d", f.File, f.Line)
	}
	if where != "" {
		where = " (" + where + ")"
	}
	return fmt.Sprintf("%s %s%s: %s", f.Severity, f.Code, where, f.Message)
}

// Filesystem is one partition of the image and what it holds.
type Filesystem struct {
	Partition int    `json:"partition"`
	Type      string `json:"type,omitempty"` // blkid's name; "" unknown
	UUID      string `json:"uuid,omitempty"`
	Label     string `json:"label,omitempty"`
	PartUUID  string `json:"partUuid,omitempty"`
	PartLabel string `json:"partLabel,omitempty"`
	// Examined is true when byoi read it; Mount is where the image's
	// fstab mounts it ("/" for the root).
	Examined bool   `json:"examined"`
	Mount    string `json:"mount,omitempty"`
}

// Kernel is the default boot entry's kernel.
type Kernel struct {
	Source  string   `json:"source"` // the file the entry comes from
	Path    string   `json:"path"`
	Version string   `json:"version,omitempty"`
	Initrds []string `json:"initrds,omitempty"`
	Cmdline string   `json:"cmdline,omitempty"`
	// InitrdSegments tell how the initramfs is made ("cpio", "zstd"...).
	InitrdSegments []string `json:"initrdSegments,omitempty"`
}

// Report is what Check found.
type Report struct {
	Findings    []Finding    `json:"findings"`
	Filesystems []Filesystem `json:"filesystems"`
	Kernel      *Kernel      `json:"kernel,omitempty"`
	// Reads and BytesRead count the reads of the image (for an HTTP
	// Range reader: requests and bytes).
	Reads     int           `json:"reads"`
	BytesRead int64         `json:"bytesRead"`
	Duration  time.Duration `json:"duration"`
}

// Refusals returns the findings of severity Refuse.
func (r *Report) Refusals() []Finding { return r.bySeverity(Refuse) }

// Warnings returns the findings of severity Warn.
func (r *Report) Warnings() []Finding { return r.bySeverity(Warn) }

func (r *Report) bySeverity(s Severity) []Finding {
	var out []Finding
	for _, f := range r.Findings {
		if f.Severity == s {
			out = append(out, f)
		}
	}
	return out
}

// Options tune Check.
type Options struct {
	// Limits bound the reads of the image (vfs.Limits' defaults: 512 MiB
	// read at most, a 16 MiB cache).
	Limits vfs.Limits
	// Timeout bounds the whole check (0: 60 s); ctx may end it sooner.
	Timeout time.Duration
}

// Check examines the disk an image becomes (disk, size bytes, logical
// sector size sectorSize: 512 or 4096; 0 means 512) against the server's
// facts. disk is only read. The error is non-nil only when the checks
// could not run at all (bad arguments, the context ended, the first
// sectors unreadable); what is wrong with the image is in the findings.
func Check(ctx context.Context, disk io.ReaderAt, size, sectorSize int64, facts Facts, opts Options) (*Report, error) {
	start := time.Now()
	if sectorSize == 0 {
		sectorSize = 512
	}
	if sectorSize != 512 && sectorSize != 1024 && sectorSize != 2048 && sectorSize != 4096 {
		return nil, fmt.Errorf("imagecheck: sector size %d is not supported", sectorSize)
	}
	if size < 2*sectorSize {
		return nil, fmt.Errorf("imagecheck: a disk of %d bytes is too small", size)
	}
	if opts.Timeout <= 0 {
		opts.Timeout = 60 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, opts.Timeout)
	defer cancel()
	r := vfs.NewReader(ctx, disk, size, opts.Limits)
	c := &checker{ctx: ctx, r: r, size: size, ss: sectorSize, facts: facts, rep: &Report{Findings: []Finding{}, Filesystems: []Filesystem{}}}
	err := c.run()
	c.rep.Reads, c.rep.BytesRead = r.Stats()
	c.rep.Duration = time.Since(start)
	if err != nil {
		return nil, err
	}
	if cerr := ctx.Err(); cerr != nil {
		return nil, fmt.Errorf("imagecheck: %w", cerr)
	}
	return c.rep, nil
}

// CheckHead makes the checks the first MiB of an image allows (a streamed
// raw or OVA image before anything is written): the boot mode against the
// partition table and the MBR's boot code. An EFI System Partition that is
// present counts as bootable here (its loader is checked by Check, once
// the image is on the disk).
func CheckHead(head []byte, sectorSize int64, facts Facts) ([]Finding, error) {
	if sectorSize == 0 {
		sectorSize = 512
	}
	if int64(len(head)) < 2*sectorSize {
		return nil, errors.New("imagecheck: head too short")
	}
	hd := headDisk{b: head, ss: sectorSize}
	t, err := partition.Read(hd)
	if err != nil {
		return nil, fmt.Errorf("imagecheck: partition table: %w", err)
	}
	c := &checker{ctx: context.Background(), rep: &Report{}, facts: facts, ss: sectorSize, table: t, mbr: head[:512], headOnly: true}
	c.bootMode()
	return c.rep.Findings, nil
}

// headDisk is the first bytes of a disk, larger than they are: reads past
// them are zeros (the table's own reads stay in the first MiB; a backup
// GPT is not there to read).
type headDisk struct {
	b  []byte
	ss int64
}

func (h headDisk) ReadAt(p []byte, off int64) (int, error) {
	clear(p)
	if off < int64(len(h.b)) {
		copy(p, h.b[off:])
	}
	return len(p), nil
}
func (h headDisk) WriteAt([]byte, int64) (int, error) { return 0, errReadOnly }
func (h headDisk) Size() int64                        { return 1 << 40 }
func (h headDisk) SectorSize() int64                  { return h.ss }

var errReadOnly = errors.New("imagecheck: the image is read-only")

// roDisk presents the Reader as a partition.Disk that refuses writes.
type roDisk struct {
	r    io.ReaderAt
	size int64
	ss   int64
}

func (d roDisk) ReadAt(p []byte, off int64) (int, error) { return d.r.ReadAt(p, off) }
func (d roDisk) WriteAt([]byte, int64) (int, error)      { return 0, errReadOnly }
func (d roDisk) Size() int64                             { return d.size }
func (d roDisk) SectorSize() int64                       { return d.ss }

// add records a finding.
func (c *checker) add(sev Severity, code job.Code, file string, line int, args ...any) {
	for _, f := range c.rep.Findings { // the same finding once
		if f.Code == code && f.File == file && f.Line == line && f.Message == job.Text(code, args...) {
			return
		}
	}
	c.rep.Findings = append(c.rep.Findings, Finding{Code: code, Severity: sev, File: file, Line: line, Args: args, Message: job.Text(code, args...)})
}

// safe runs fn, turning a panic into a Note about what.
func (c *checker) safe(what string, fn func()) {
	defer func() {
		if p := recover(); p != nil {
			c.add(Note, job.CheckNotExamined, "", 0, what, fmt.Sprintf("internal error: %v", p))
		}
	}()
	fn()
}

// normMod is a module's name as the kernel compares them.
func normMod(s string) string {
	s = strings.ToLower(strings.TrimSpace(s))
	for _, ext := range []string{".ko.xz", ".ko.zst", ".ko.gz", ".ko"} {
		s = strings.TrimSuffix(s, ext)
	}
	if i := strings.LastIndexByte(s, '/'); i >= 0 {
		s = s[i+1:]
	}
	return strings.ReplaceAll(s, "-", "_")
}
