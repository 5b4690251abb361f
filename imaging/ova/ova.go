// Package ova streams the boot disk of an OVA archive (a tar of an OVF
// descriptor, a manifest and VMDK disks) onto an imaging.Target in one pass:
// the descriptor says which disk boots (ParseOVF), the manifest's digests
// are checked as the members stream, and the VMDK's grains are inflated in
// parallel (package vmdk). Write only writes: crash safety is the
// imaging.Guard's.
package ova

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"log/slog"
	"runtime"
	"strings"
	"time"

	"github.com/klauspost/compress/gzip"

	"github.com/byoi/byoi/imaging"
	"github.com/byoi/byoi/imaging/vmdk"
	"github.com/byoi/byoi/partition"
)

// Bounds on what an OVA may hold (DSP0243 section 5: an OVA is a tar
// archive of an OVF descriptor, optional manifest and certificate, and the
// files the descriptor references).
const (
	maxMembers = 64
	maxCert    = 1 << 20
	// maxOther bounds a member the descriptor does not reference
	// (nvram files and the like): it is read and dropped.
	maxOther = 64 << 20
	// maxTrailing bounds the zeros after the end-of-archive marker
	// (tar pads to its record size: 10 KiB for GNU tar).
	maxTrailing = 16 << 20
)

// Options tune Write.
type Options struct {
	// DeclaredSize is the OVA's size announced by the source
	// (Content-Length); <= 0 when unknown. A stream that ends at another
	// size is an error.
	DeclaredSize int64
	// TargetName names the target in a SizeError, e.g. "/dev/sda".
	TargetName string
	// Hash, when set, is fed every byte of the OVA in order.
	Hash hash.Hash
	// Check, when set, is called with the virtual disk's first MiB before
	// anything is written; an error aborts with nothing written and is
	// returned unchanged.
	Check func(head []byte) error
	// Capacity, when set, is told the virtual disk's size once the VMDK
	// header was read, before anything is written: Write writes
	// [0, n) of the target (a Guard holds the image's last MiB, its
	// backup GPT).
	Capacity func(n int64)
	// Start, when set, is called once every check that can be made before
	// writing passed, just before the first write: the writer's phase
	// moves from checking to writing (a Guard clears the old tables then:
	// Guard.Start). An error aborts with nothing written.
	Start func() error
	// Ended, when set, is called once the whole OVA was read and hashed
	// (Hash complete), its manifest checked and the virtual disk (of the
	// size given) written, before the target is flushed: the writer's
	// phase moves from streaming to flushing. An error aborts and is
	// returned unchanged.
	Ended func(size int64) error
	// Progress, when set, receives the bytes of the OVA read and
	// DeclaredSize (-1 when unknown), at most every 100 ms and at the end.
	Progress imaging.Progress
	// Workers inflating grains in parallel (default: GOMAXPROCS, 2..8).
	Workers int
	// Logger receives debug and error logs (nil: discard).
	Logger *slog.Logger
}

// Result describes a deployed OVA.
type Result struct {
	// Disk is the archive member deployed, DiskID its OVF disk id.
	Disk   string
	DiskID string
	// CreateType is the VMDK type: vmdk.StreamOptimized or
	// vmdk.MonolithicSparse.
	CreateType string
	// VirtualSize is the disk's capacity in bytes: [0, VirtualSize) of
	// the target holds the disk.
	VirtualSize int64
	// Table is the disk's partition table: "gpt" or "mbr".
	Table string
	// Read is the size of the OVA in bytes.
	Read int64
	// Written and Zeroed count the bytes of the virtual disk written and
	// zeroed (ZeroRange) on the target.
	Written, Zeroed int64
	// Manifest is the manifest member whose digests were verified, ""
	// when the OVA has none.
	Manifest string
	// Warnings are for the customer: other disks not deployed, files
	// ignored.
	Warnings []string
}

// Write deploys the boot disk of an OVA package streaming from src onto
// dst, in one pass and without staging: the tar archive is walked as it
// arrives, the disk's VMDK grains are inflated in parallel and written as
// they come.
//
// Nothing is written before everything that can be checked up front
// passed: the OVF descriptor (the first member) and the choice of the disk
// (ParseOVF), every member before the disk (plain names, regular files,
// sizes), the VMDK's header and descriptor (no other file named, capacity
// within dst), and the disk's first MiB, which must hold a partition table
// (partition.Examine's verdict) and pass opts.Check. It is assembled from the grains the stream brings
// before the first grain past it: VMware, VirtualBox and qemu-img write
// grains in disk order, so all of them. A stream in another order (the
// format allows it) whose first grain comes later is checked once read,
// before the head is written (a refusal then comes after the rest was
// written: the caller's Guard aborts it); a grain landing in the head late
// makes it checked again.
//
// Then the disk is written, every range no grain covers zeroed
// (ZeroRange), its first MiB last, once the whole OVA was read to its end,
// the manifest's digests matched (every member is digested as it streams,
// whether the manifest comes before the disk, as VMware writes it, or
// last, as VirtualBox does), the archive size matched DeclaredSize and the
// partition table was checked again if a late grain changed it. Then
// opts.Ended is called and the target flushed.
//
// Write only writes [0, virtual size) of dst: it neither clears the old
// partition tables, nor holds the image's own back, nor wipes after a
// failure; a deployment writes through an imaging.Guard, which does. Its
// errors: a *SizeError, *vmdk.Error, *Error, *ManifestError, a
// *partition.TableError, a *WriteError{Format: "ova"} for the target's
// errors, src's and Ended's errors unchanged, or the context's error.
// Refusals before writing are the same types, with the target untouched.
//
// Memory is bounded: about 16 MiB of grain buffers, a few MiB of hashing
// buffers, the held MiB of the head, and for a monolithicSparse disk its
// grain tables (16 bytes per allocated grain).
func Write(ctx context.Context, src io.Reader, dst imaging.Target, opts Options) (Result, error) {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if opts.DeclaredSize <= 0 {
		opts.DeclaredSize = -1
	}
	workers := opts.Workers
	if workers <= 0 {
		workers = min(max(runtime.GOMAXPROCS(0), 2), 8)
	}
	var res Result
	if err := ctx.Err(); err != nil {
		return res, err
	}
	start := time.Now()
	w := newWalker(ctx, src, opts, log)
	started := false // the pipeline owns w once started
	defer func() {
		if !started {
			w.close()
		}
	}()

	// Up front, nothing written: the descriptor, the members before the
	// disk, the VMDK's header and descriptor.
	if err := w.readOVF(); err != nil {
		return res, err
	}
	hdr, err := w.untilDisk()
	if err != nil {
		return res, err
	}
	ds, err := w.openDisk(hdr, dst.Size())
	if err != nil {
		var se *imaging.SizeError
		if errors.As(err, &se) {
			se.TargetName = opts.TargetName
			se.TargetSize = dst.Size()
		}
		return res, err
	}
	info := ds.Info()
	res.Disk, res.DiskID, res.CreateType, res.VirtualSize = w.diskName, w.ovf.Boot.ID, info.CreateType, info.Capacity
	if info.CreateType != w.ovf.Boot.CreateType {
		w.warn(fmt.Sprintf("the OVF descriptor says disk %s is %s, the file is %s", w.ovf.Boot.ID, w.ovf.Boot.CreateType, info.CreateType))
	}
	if c := w.ovf.Boot.Capacity; c >= 0 && c != info.Capacity {
		w.warn(fmt.Sprintf("the OVF descriptor gives disk %s a capacity of %d bytes, the VMDK %d", w.ovf.Boot.ID, c, info.Capacity))
	}

	// The head: grains up to the first one past it (and the next); then
	// the partition table check.
	if opts.Capacity != nil {
		opts.Capacity(info.Capacity)
	}
	xw := newExtentWriter(ctx, dst, info.Capacity, "ova")
	p := newPipeline(ds, workers)
	pending, headKnown, err := p.prelude(xw)
	if err != nil {
		return res, err
	}
	// checkHead checks the head once, and again at the end only if a
	// grain that came late changed it.
	var checked [sha256.Size]byte
	checkHead := func() error {
		sum := sha256.Sum256(xw.head)
		if res.Table != "" && sum == checked {
			return nil
		}
		// partition.Examine is byoi's one partition-table verdict (Linux's
		// rules), as for raw images: a table Linux would read otherwise
		// is refused with its *partition.TableError.
		v, err := partition.Examine(xw.head)
		if errors.Is(err, partition.ErrNoTable) {
			return refuse(w.diskName, "the virtual disk holds no partition table; it seems to contain: %s", describeHead(xw.head))
		}
		if err != nil {
			return err
		}
		table := v.Table
		if res.Table != "" && table != res.Table {
			return refuse(w.diskName, "a grain that came late changed the virtual disk's partition table")
		}
		res.Table, checked = table, sum
		if opts.Check != nil {
			return opts.Check(xw.head)
		}
		return nil
	}
	if headKnown {
		if err := checkHead(); err != nil {
			return res, err
		}
	} else {
		// The stream brings the disk's first grain later (grains out of
		// order): the partition table is checked once the disk was read,
		// before it is written; a refusal then is aborted by the caller's
		// Guard.
		log.Warn("OVA disk grains out of order: its partition table is checked after the rest was written", "member", w.diskName)
	}
	if err := ctx.Err(); err != nil {
		return res, err
	}
	log.Debug("writing OVA disk", "member", w.diskName, "type", info.CreateType, "capacity", info.Capacity,
		"grain", info.GrainSize, "table", res.Table, "target_size", dst.Size(), "workers", workers)

	// Once the pipeline started its reader goroutine owns w: what fail
	// reports of it is taken now.
	warnings := append([]string(nil), w.warnings...)
	fail := func(err error) (Result, error) {
		log.Error("OVA write failed", "error", err)
		res.Warnings = warnings
		res.Written, res.Zeroed = xw.written, xw.zeroed
		return res, err
	}
	if opts.Start != nil {
		if err := opts.Start(); err != nil {
			return res, err
		}
	}
	started = true
	if err := p.run(ctx, w, xw, pending); err != nil {
		return fail(err)
	}
	if err := xw.finish(); err != nil {
		return fail(err)
	}
	res.Read = w.counter.n
	if opts.DeclaredSize > 0 && res.Read != opts.DeclaredSize {
		if res.Read < opts.DeclaredSize {
			return fail(fmt.Errorf("OVA ended after %d of %d bytes: %w", res.Read, opts.DeclaredSize, io.ErrUnexpectedEOF))
		}
		return fail(fmt.Errorf("OVA is %d bytes, more than the %d bytes announced", res.Read, opts.DeclaredSize))
	}
	if err := checkHead(); err != nil {
		return fail(err)
	}
	if err := ctx.Err(); err != nil {
		return fail(err)
	}
	if err := xw.writeHead(); err != nil {
		return fail(err)
	}
	if opts.Progress != nil {
		opts.Progress(res.Read, opts.DeclaredSize)
	}
	if opts.Ended != nil {
		if err := opts.Ended(info.Capacity); err != nil {
			return fail(err)
		}
	}
	if err := ctx.Err(); err != nil {
		return fail(err)
	}
	if err := dst.Sync(); err != nil {
		return fail(&imaging.WriteError{Format: "ova", Err: err})
	}
	res.Written, res.Zeroed = xw.written, xw.zeroed
	res.Manifest = w.mfName
	res.Warnings = w.warnings
	el := time.Since(start)
	log.Info("OVA disk written", "member", res.Disk, "virtual_size", res.VirtualSize, "ova_bytes", res.Read,
		"written", res.Written, "zeroed", res.Zeroed, "manifest", res.Manifest, "seconds", el.Seconds(),
		"mb_per_s", float64(res.VirtualSize)/1e6/max(el.Seconds(), 1e-9))
	for _, wn := range res.Warnings {
		log.Warn("OVA", "warning", wn)
	}
	return res, nil
}

// progressEvery limits how often Progress is called.
const progressEvery = 100 * time.Millisecond

// describeHead names what a disk head seems to hold, for a refusal.
func describeHead(head []byte) string {
	switch f := imaging.Sniff(head); f {
	case imaging.FormatEmpty:
		return "only zeros"
	case imaging.FormatUnknown:
		return "unknown data"
	default:
		return string(f)
	}
}

// byteCounter counts the bytes read from the OVA and reports progress.
type byteCounter struct {
	ctx      context.Context
	r        io.Reader
	n        int64
	total    int64
	progress imaging.Progress
	last     time.Time
	empty    int
}

func (c *byteCounter) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	n, err := c.r.Read(p)
	c.n += int64(n)
	if n == 0 && err == nil {
		if c.empty++; c.empty >= 100 {
			return 0, io.ErrNoProgress
		}
	} else {
		c.empty = 0
	}
	if c.progress != nil && n > 0 && time.Since(c.last) >= progressEvery {
		c.last = time.Now()
		c.progress(c.n, c.total)
	}
	return n, err
}

// countReader counts the bytes read through it.
type countReader struct {
	r io.Reader
	n int64
}

func (c *countReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// walker walks the tar archive of an OVA, member by member, digesting each
// for the manifest.
type walker struct {
	log     *slog.Logger
	counter *byteCounter
	outer   *hashTee     // opts.Hash over the whole OVA
	tarIn   *countReader // the bytes archive/tar consumed
	tr      *tar.Reader

	members  int
	names    map[string]bool
	lastEnd  int64 // tarIn offset where the last member's data (padded) ends
	ovf      *OVF
	ovfName  string
	diskName string
	mfName   string
	manifest *manifestFile
	digests  map[string]map[string]string // member -> algo -> hex digest
	warnings []string

	// The member being read.
	cur     string
	curTee  *hashTee
	curAlgo []string
	curHash []hash.Hash
}

func newWalker(ctx context.Context, src io.Reader, opts Options, log *slog.Logger) *walker {
	w := &walker{log: log, names: map[string]bool{}, digests: map[string]map[string]string{}}
	w.counter = &byteCounter{ctx: ctx, r: src, total: opts.DeclaredSize, progress: opts.Progress, last: time.Now()}
	var hs []hash.Hash
	if opts.Hash != nil {
		hs = append(hs, opts.Hash)
	}
	w.outer = newHashTee(w.counter, hs, 1<<20, 4)
	w.tarIn = &countReader{r: w.outer}
	w.tr = tar.NewReader(w.tarIn)
	return w
}

func (w *walker) warn(s string) { w.warnings = append(w.warnings, s) }

// close stops the hashing goroutines.
func (w *walker) close() {
	if w.curTee != nil {
		w.curTee.close()
	}
	w.outer.close()
}

// next returns the next member (a plain regular file), or io.EOF at the
// archive's end-of-archive marker.
func (w *walker) next() (*tar.Header, string, error) {
	for {
		hdr, err := w.tr.Next()
		if err == io.EOF {
			// archive/tar also ends quietly on a stream cut at a member
			// boundary: only two zero blocks make an end.
			if w.tarIn.n < w.lastEnd+2*512 {
				return nil, "", &Error{Reason: fmt.Sprintf("archive truncated after %d bytes, without its end-of-archive marker", w.tarIn.n), Err: io.ErrUnexpectedEOF}
			}
			return nil, "", io.EOF
		}
		if err != nil {
			return nil, "", w.tarErr(err)
		}
		w.members++
		if w.members > maxMembers {
			return nil, "", refuse("", "more than %d archive members", maxMembers)
		}
		if hdr.Typeflag == tar.TypeXGlobalHeader {
			continue // pax global header: attributes only
		}
		name := cleanName(hdr.Name)
		switch {
		case !vmdk.PlainName(name):
			return nil, "", refuse(hdr.Name, "member name is not a plain file name (directories, '..', absolute paths are refused)")
		case hdr.Typeflag == tar.TypeGNUSparse || paxSparse(hdr):
			return nil, "", refuse(name, "member is a sparse file, which byoi does not read")
		case hdr.Typeflag != tar.TypeReg:
			return nil, "", refuse(name, "member is not a regular file (tar type %q): links, devices and directories are refused", string(hdr.Typeflag))
		case hdr.Size < 0:
			return nil, "", refuse(name, "member has a negative size")
		case w.names[name]:
			return nil, "", refuse(name, "member appears twice")
		}
		w.names[name] = true
		w.lastEnd = w.tarIn.n + (hdr.Size+511)/512*512
		w.log.Debug("OVA member", "name", name, "size", hdr.Size)
		return hdr, name, nil
	}
}

func paxSparse(hdr *tar.Header) bool {
	for k := range hdr.PAXRecords {
		if strings.HasPrefix(k, "GNU.sparse.") {
			return true
		}
	}
	return false
}

// tarErr turns archive/tar's errors into refusals; the source's own
// errors pass unchanged.
func (w *walker) tarErr(err error) error {
	switch {
	case errors.Is(err, io.ErrUnexpectedEOF):
		return &Error{Reason: fmt.Sprintf("archive truncated after %d bytes", w.tarIn.n), Err: io.ErrUnexpectedEOF}
	case errors.Is(err, tar.ErrHeader), errors.Is(err, tar.ErrFieldTooLong), errors.Is(err, tar.ErrInsecurePath):
		return &Error{Reason: "not a valid tar archive", Err: err}
	}
	var ve *vmdk.Error
	var oe *Error
	var me *ManifestError
	if errors.As(err, &ve) || errors.As(err, &oe) || errors.As(err, &me) {
		return err
	}
	if strings.HasPrefix(err.Error(), "archive/tar:") {
		return &Error{Reason: "not a valid tar archive", Err: err}
	}
	return err
}

// open starts reading member name through its digests: the algorithms
// the manifest lists for it, or every algorithm byoi checks while the
// manifest has not been seen.
func (w *walker) open(name string, size int64) io.Reader {
	w.cur = name
	if w.manifest != nil {
		w.curAlgo = w.manifest.algos(name)
	} else {
		w.curAlgo = algos
	}
	w.curHash = w.curHash[:0]
	for _, a := range w.curAlgo {
		w.curHash = append(w.curHash, newHash(a))
	}
	w.curTee = newHashTee(w.tr, w.curHash, int(min(max(size, 4096), 256<<10)), 4)
	return w.curTee
}

// endMember reads what is left of the member, finishes its digests and
// checks them against the manifest when it is known.
func (w *walker) endMember(r io.Reader) error {
	if _, err := io.Copy(io.Discard, r); err != nil {
		return w.tarErr(err)
	}
	w.curTee.close()
	w.curTee = nil
	sums := map[string]string{}
	for i, a := range w.curAlgo {
		sums[a] = hex.EncodeToString(w.curHash[i].Sum(nil))
	}
	w.digests[w.cur] = sums
	if w.manifest != nil {
		return w.manifest.check(w.cur, sums)
	}
	return nil
}

// readSmall reads a whole member of at most limit bytes.
func (w *walker) readSmall(hdr *tar.Header, name string, limit int64, what string) ([]byte, error) {
	if hdr.Size > limit {
		return nil, refuse(name, "%s of %d bytes is larger than %d", what, hdr.Size, limit)
	}
	r := w.open(name, hdr.Size)
	b := make([]byte, hdr.Size)
	if _, err := io.ReadFull(r, b); err != nil {
		return nil, w.tarErr(err)
	}
	return b, w.endMember(r)
}

// readOVF reads the first member, which must be the OVF descriptor.
func (w *walker) readOVF() error {
	hdr, name, err := w.next()
	if err == io.EOF {
		return refuse("", "the archive is empty")
	}
	if err != nil {
		return err
	}
	if !strings.EqualFold(extOf(name), ".ovf") {
		return refuse(name, "the first member of an OVA must be the OVF descriptor (*.ovf)")
	}
	b, err := w.readSmall(hdr, name, maxDescriptor, "OVF descriptor")
	if err != nil {
		return err
	}
	info, err := ParseOVF(b)
	if err != nil {
		var oe *Error
		if errors.As(err, &oe) && oe.Member == "" {
			oe.Member = name
		}
		return err
	}
	w.ovf, w.ovfName = info, name
	w.warnings = append(w.warnings, info.Warnings...)
	w.diskName = info.BootFile.Href
	return nil
}

func extOf(name string) string {
	if i := strings.LastIndexByte(name, '.'); i >= 0 {
		return name[i:]
	}
	return ""
}

// member handles one member that is not the deployed disk.
func (w *walker) member(hdr *tar.Header, name string) error {
	switch ext := strings.ToLower(extOf(name)); {
	case ext == ".ovf":
		return refuse(name, "a second OVF descriptor")
	case ext == ".mf":
		if w.manifest != nil {
			return refuse(name, "a second manifest")
		}
		b, err := w.readSmall(hdr, name, maxManifest, "manifest")
		if err != nil {
			return err
		}
		m, err := parseManifest(b)
		if err != nil {
			return err
		}
		w.manifest, w.mfName = m, name
		for _, n := range m.order {
			if sums, ok := w.digests[n]; ok {
				if err := m.check(n, sums); err != nil {
					return err
				}
			}
		}
		return nil
	case ext == ".cert":
		// The certificate signs the manifest with the publisher's key.
		// byoi has no trust anchor for it (the customer gives none): the
		// integrity of the download rests on the customer's checksum of
		// the whole OVA and on the manifest. It is read and ignored.
		_, err := w.readSmall(hdr, name, maxCert, "certificate")
		return err
	}
	f, referenced := w.ovf.File(name)
	if referenced && f.Size >= 0 && f.Size != hdr.Size {
		return refuse(name, "member is %d bytes, the OVF descriptor says %d", hdr.Size, f.Size)
	}
	if !referenced {
		if hdr.Size > maxOther {
			return refuse(name, "member of %d bytes is not referenced by the OVF descriptor", hdr.Size)
		}
		w.warn(fmt.Sprintf("member %q is not referenced by the OVF descriptor and is ignored", name))
	}
	return w.endMember(w.open(name, hdr.Size))
}

// untilDisk handles the members before the disk and returns the disk's
// header.
func (w *walker) untilDisk() (*tar.Header, error) {
	for {
		hdr, name, err := w.next()
		if err == io.EOF {
			return nil, refuse(w.diskName, "the disk the OVF descriptor deploys is not in the archive")
		}
		if err != nil {
			return nil, err
		}
		if name == w.diskName {
			return hdr, nil
		}
		if err := w.member(hdr, name); err != nil {
			return nil, err
		}
	}
}

// openDisk starts reading the disk member and its VMDK header and
// descriptor.
func (w *walker) openDisk(hdr *tar.Header, targetSize int64) (*diskMember, error) {
	f := w.ovf.BootFile
	if f.Size >= 0 && f.Size != hdr.Size {
		return nil, refuse(w.diskName, "member is %d bytes, the OVF descriptor says %d", hdr.Size, f.Size)
	}
	d := &diskMember{member: w.open(w.diskName, hdr.Size)}
	var r io.Reader = d.member
	limit := hdr.Size
	if f.Compression == "gzip" {
		src := &sourceReader{r: d.member}
		zr, err := gzip.NewReader(src)
		if err != nil {
			if src.err != nil {
				return nil, w.tarErr(src.err)
			}
			return nil, &Error{Member: w.diskName, Reason: "disk member is not gzip data", Err: err}
		}
		d.gz = zr
		r = &gzipMember{zr: zr, src: src, member: w.diskName}
		limit = 0 // bounded below, once the capacity is known
	}
	ds, err := vmdk.Open(r, w.diskName, targetSize, limit)
	if err != nil {
		return nil, err
	}
	if d.gz != nil {
		// A decompression bomb: the VMDK of a disk is at most its
		// capacity twice (compressed grains and their markers) plus
		// its tables.
		ds.SetLimit(2*ds.Info().Capacity + 64<<20)
	}
	d.Stream = ds
	return d, nil
}

// diskMember is the disk member being read.
type diskMember struct {
	*vmdk.Stream
	member io.Reader
	gz     *gzip.Reader
}

// sourceReader remembers the first error of the archive under a gzip
// member (other than io.EOF), to tell it from gzip's own.
type sourceReader struct {
	r   io.Reader
	err error
}

func (s *sourceReader) Read(p []byte) (int, error) {
	n, err := s.r.Read(p)
	if err != nil && err != io.EOF && s.err == nil {
		s.err = err
	}
	return n, err
}

// gzipMember tells gzip's errors (corrupt data: an Error) from those of
// the archive or the source under it (returned unchanged).
type gzipMember struct {
	zr     *gzip.Reader
	src    *sourceReader
	member string
}

func (g *gzipMember) Read(p []byte) (int, error) {
	n, err := g.zr.Read(p)
	if err != nil && err != io.EOF {
		if g.src.err != nil {
			return n, g.src.err
		}
		if err == io.ErrUnexpectedEOF {
			return n, &Error{Member: g.member, Reason: "gzip data truncated", Err: io.ErrUnexpectedEOF}
		}
		return n, &Error{Member: g.member, Reason: "corrupt gzip data", Err: err}
	}
	return n, err
}

// finishDisk reads the rest of the disk member after the VMDK's data.
func (w *walker) finishDisk(d *diskMember) error {
	if err := d.Drain(); err != nil {
		return err
	}
	if d.gz != nil {
		if err := d.gz.Close(); err != nil {
			return &Error{Member: w.diskName, Reason: "corrupt gzip data", Err: err}
		}
	}
	return w.endMember(d.member)
}

// rest handles the members after the disk, the end of the archive and
// what follows it, and checks that the manifest vouched for everything.
func (w *walker) rest() error {
	for {
		hdr, name, err := w.next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		if err := w.member(hdr, name); err != nil {
			return err
		}
	}
	// Read the source to its very end, so the caller's hash covers the
	// whole file: tar pads the archive with zeros to its record size.
	buf := make([]byte, 32<<10)
	var n int64
	for {
		k, err := w.tarIn.Read(buf)
		if !imaging.AllZero(buf[:k]) {
			return refuse("", "data follows the end of the archive at byte %d", w.tarIn.n-int64(k))
		}
		if n += int64(k); n > maxTrailing {
			return refuse("", "more than %d bytes follow the end of the archive", maxTrailing)
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
	}
	w.outer.close()
	if m := w.manifest; m != nil {
		if len(m.entries[w.diskName]) == 0 {
			return &ManifestError{Member: w.diskName, Reason: "the disk is not listed in the manifest"}
		}
		for _, name := range m.order {
			if !w.names[name] {
				return &ManifestError{Member: name, Reason: "listed in the manifest but not in the archive"}
			}
			for _, e := range m.entries[name] {
				if !e.checked {
					return &ManifestError{Member: name, Algo: e.algo, Reason: "digest was not checked"}
				}
			}
		}
	}
	for _, f := range w.ovf.Files {
		if !w.names[f.Href] && vmdk.PlainName(f.Href) {
			w.warn(fmt.Sprintf("file %q referenced by the OVF descriptor is not in the archive", f.Href))
		}
	}
	return nil
}
