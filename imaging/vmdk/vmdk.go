// Package vmdk reads the two VMDK layouts images are shipped in, the
// stream-optimized one (OVA exports) and monolithicSparse, from a stream,
// in one pass and in bounded memory: CheckHeader judges a header and its
// embedded descriptor, Open and Stream.Next hand out the grains in the order
// they come, Inflater inflates compressed ones. A descriptor naming other
// files, a layout that needs seeking backwards, or grains past the capacity
// are refused (*Error).
package vmdk

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"strconv"
	"strings"

	"github.com/byoi/byoi/imaging"

	"github.com/klauspost/compress/zlib"
)

// Layout of a hosted sparse VMDK extent, from VMware's "Virtual Disk Format
// 5.0" technical note (VDF 5.0): the SparseExtentHeader (section "Hosted
// Sparse Extent Header"), the stream-optimized markers (section
// "Stream-Optimized Compressed Sparse Extents") and the embedded descriptor
// (section "The Descriptor File"). All integers are little endian; offsets
// and sizes are in 512-byte sectors.
const (
	sectorBytes = 512
	magic       = "KDMV" // magicNumber 0x564d444b ('V'<<24 | 'M'<<16 | 'D'<<8 | 'K')

	// SparseExtentHeader field offsets (the struct is packed).
	offVersion   = 4
	offFlags     = 8
	offCapacity  = 12
	offGrainSize = 20
	offDescOff   = 28
	offDescSize  = 36
	offNumGTEs   = 44
	offRGD       = 48
	offGD        = 56
	offOverHead  = 64
	offNLChars   = 73 // singleEndLineChar, nonEndLineChar, doubleEndLineChar1, 2
	offCompress  = 77

	// flags bits.
	flagNLDetect   = 1 << 0  // "valid new line detection test"
	flagRGD        = 1 << 1  // redundant grain table in use
	flagZeroGrain  = 1 << 2  // zeroed-grain GTE (value 1) in use (version 2)
	flagCompressed = 1 << 16 // grains are compressed
	flagMarkers    = 1 << 17 // there are markers

	// gDAtEnd in the first header's gdOffset of a stream-optimized
	// extent: the grain directory (and the real header) is in the footer
	// at the end of the stream.
	gDAtEnd = 0xFFFFFFFFFFFFFFFF

	compressNone    = 0
	compressDeflate = 1 // RFC 1950 zlib streams, as VMware, qemu and VirtualBox write them

	// Metadata marker types (VDF 5.0: MARKER_EOS, MARKER_GT, MARKER_GD,
	// MARKER_FOOTER). Type 4 is undocumented: VirtualBox's reader
	// (VMDK.cpp, VMDK_MARKER_UNSPECIFIED) met it in vSphere images and
	// skips the marker's own sector only; so do we.
	markerEOS         = 0
	markerGT          = 1
	markerGD          = 2
	markerFooter      = 3
	markerUnspecified = 4

	// gtEntries is numGTEsPerGT: "The value of this entry for VMware
	// virtual disks is 512" (VDF 5.0); qemu refuses larger values. A grain
	// table is then 2048 bytes (4 sectors).
	gtEntries = 512

	// Grain size bounds in sectors: VDF 5.0 says a power of 2 and at
	// least 8 (4 KiB); every writer we know uses 128 (64 KiB). 1 MiB is a
	// generous bound that keeps the grain buffers small.
	minGrain = 8
	maxGrain = 2048

	// maxDescriptor bounds the embedded descriptor (a few hundred
	// bytes in practice; qemu reserves 20 sectors).
	maxDescriptor = 64 << 10

	// maxGrains bounds capacity/grainSize: 16 TiB of 64 KiB grains.
	// It bounds the written-grains bitmap (32 MiB) and the grain
	// directory (2 MiB).
	maxGrains = 1 << 28

	// maxPending bounds the grain table entries of a monolithicSparse
	// extent held in memory while its grains stream past (16 bytes each:
	// 64 MiB; a 16 GiB disk of 64 KiB grains needs 4 MiB).
	maxPending = 1 << 22

	// maxTrailing bounds the bytes after the end of a VMDK's data
	// (qemu pads a stream-optimized file up to a whole grain).
	maxTrailing = 16 << 20
)

// descriptorMagic starts a descriptor file (VDF 5.0, "The Descriptor
// File").
const descriptorMagic = "# Disk DescriptorFile"

// ErrRefused is matched (errors.Is) by every refusal of a VMDK image: a layout
// byoi does not stream, a descriptor naming other files, or corrupt data.
var ErrRefused = errors.New("vmdk image refused")

// Error is a VMDK image byoi refuses, with the reason.
type Error struct {
	Reason string
	Err    error
}

func (e *Error) Error() string {
	reason := e.Reason
	if e.Err != nil {
		reason += ": " + e.Err.Error()
	}
	return "VMDK image refused: " + reason
}

// Is makes errors.Is(err, ErrRefused) true.
func (e *Error) Is(target error) bool { return target == ErrRefused }

func (e *Error) Unwrap() error { return e.Err }

func refuse(format string, args ...any) error {
	return &Error{Reason: fmt.Sprintf(format, args...)}
}

// VMDK create types byoi streams (the descriptor's createType).
const (
	StreamOptimized  = "streamOptimized"
	MonolithicSparse = "monolithicSparse"
)

// Info is what the header and the embedded descriptor of a VMDK say.
type Info struct {
	// CreateType is StreamOptimized or MonolithicSparse.
	CreateType string
	// Version is the sparse header version (1, 2 or 3).
	Version int
	// Capacity is the virtual disk size in bytes.
	Capacity int64
	// GrainSize is the grain size in bytes.
	GrainSize int64
	// Compressed: grains are zlib compressed (stream-optimized).
	Compressed bool
	// FooterAtEnd: the first header's gdOffset is GD_AT_END, as VMware
	// writes stream-optimized files; the footer holds the real header.
	FooterAtEnd bool
	// ExtentFile is the file name the descriptor's extent line gives.
	ExtentFile string
}

// sparseHeader is a parsed SparseExtentHeader.
type sparseHeader struct {
	version, flags                uint32
	capacity, grainSize           uint64
	descOffset, descSize          uint64
	numGTEs                       uint32
	rgdOffset, gdOffset, overHead uint64
	nlChars                       [4]byte
	compress                      uint16
}

func parseHeader(b []byte) (sparseHeader, error) {
	var h sparseHeader
	if len(b) < sectorBytes {
		return h, refuse("header is %d bytes, want %d", len(b), sectorBytes)
	}
	if string(b[:4]) != magic {
		return h, refuse("no sparse extent header (magic %q)", b[:4])
	}
	le := binary.LittleEndian
	h.version = le.Uint32(b[offVersion:])
	h.flags = le.Uint32(b[offFlags:])
	h.capacity = le.Uint64(b[offCapacity:])
	h.grainSize = le.Uint64(b[offGrainSize:])
	h.descOffset = le.Uint64(b[offDescOff:])
	h.descSize = le.Uint64(b[offDescSize:])
	h.numGTEs = le.Uint32(b[offNumGTEs:])
	h.rgdOffset = le.Uint64(b[offRGD:])
	h.gdOffset = le.Uint64(b[offGD:])
	h.overHead = le.Uint64(b[offOverHead:])
	copy(h.nlChars[:], b[offNLChars:])
	h.compress = le.Uint16(b[offCompress:])
	return h, nil
}

// check validates the header fields on their own and against maxCapacity
// (bytes; <= 0: no limit). It returns the create type the header implies.
func (h *sparseHeader) check(maxCapacity int64) (string, error) {
	if h.version < 1 || h.version > 3 {
		return "", refuse("sparse header version %d (byoi reads versions 1 to 3)", h.version)
	}
	if h.flags&flagNLDetect != 0 && h.nlChars != [4]byte{'\n', ' ', '\r', '\n'} {
		return "", refuse("the new line detection bytes are %q, not \"\\n \\r\\n\": the file was damaged by a text-mode transfer", h.nlChars[:])
	}
	if h.capacity == 0 {
		return "", refuse("capacity is 0: the disk is empty")
	}
	if h.capacity > 1<<54 {
		return "", refuse("capacity of %d sectors is absurd", h.capacity)
	}
	if maxCapacity > 0 && int64(h.capacity)*sectorBytes > maxCapacity {
		return "", &imaging.SizeError{ImageSize: int64(h.capacity) * sectorBytes, TargetSize: maxCapacity}
	}
	if h.grainSize < minGrain || h.grainSize > maxGrain || bits.OnesCount64(h.grainSize) != 1 {
		return "", refuse("grain size of %d sectors is not a power of 2 from %d to %d", h.grainSize, minGrain, maxGrain)
	}
	if grains := (h.capacity + h.grainSize - 1) / h.grainSize; grains > maxGrains {
		return "", refuse("%d grains are too many (at most %d)", grains, maxGrains)
	}
	if h.numGTEs != gtEntries {
		return "", refuse("numGTEsPerGT is %d, the specification requires %d", h.numGTEs, gtEntries)
	}
	if h.descOffset == 0 || h.descSize == 0 {
		return "", refuse("no embedded descriptor (a descriptor naming the disk's type is required)")
	}
	if h.descSize*sectorBytes > maxDescriptor || h.descOffset > 1<<20 {
		return "", refuse("embedded descriptor of %d sectors at sector %d is too large or too far", h.descSize, h.descOffset)
	}
	descEnd := h.descOffset + h.descSize
	switch h.compress {
	case compressDeflate:
		if h.flags&flagMarkers == 0 {
			return "", refuse("compressed grains without markers cannot be read as a stream")
		}
		if h.overHead < descEnd || h.overHead > 1<<40 {
			return "", refuse("grains start at sector %d, inside the header or descriptor (ending at sector %d)", h.overHead, descEnd)
		}
		return StreamOptimized, nil
	case compressNone:
		if h.flags&(flagMarkers|flagCompressed) != 0 {
			return "", refuse("flags %#x announce compressed grains or markers without a compression algorithm", h.flags)
		}
		if h.gdOffset == gDAtEnd {
			return "", refuse("the grain directory is at the end of the file: this layout needs seeking backwards and cannot be streamed")
		}
		if h.gdOffset < descEnd {
			return "", refuse("grain directory at sector %d lies before the end of the descriptor (sector %d): this layout needs seeking backwards and cannot be streamed", h.gdOffset, descEnd)
		}
		if h.gdOffset > 1<<40 {
			return "", refuse("grain directory offset %d is absurd", h.gdOffset)
		}
		return MonolithicSparse, nil
	}
	return "", refuse("unknown compression algorithm %d", h.compress)
}

// grains is the number of grains covering the capacity.
func (h *sparseHeader) grains() int64 {
	return int64((h.capacity + h.grainSize - 1) / h.grainSize)
}

// gdSectors is the size of the grain directory in sectors.
func (h *sparseHeader) gdSectors() int64 {
	gts := (h.grains() + gtEntries - 1) / gtEntries
	return (gts*4 + sectorBytes - 1) / sectorBytes
}

// descriptorFile is what byoi reads from an embedded descriptor.
type descriptorFile struct {
	createType string
	extentFile string
}

// parseDescriptor parses the embedded descriptor text (up to its first
// NUL) of a sparse extent whose header says capacity sectors and whose
// create type is want. file is the name of the VMDK itself (e.g. the OVA
// member), or "" when unknown.
//
// The descriptor must describe exactly this one file: a single SPARSE
// extent naming it, no parent (parentCID ffffffff, no
// parentFileNameHint) and no other file (changeTrackPath). byoi never opens
// a file a descriptor names (the CVE-2024-32498 class of attacks on
// qemu-img and OpenStack: a VMDK whose extents name host files); naming any
// is refused.
func parseDescriptor(text []byte, capacity uint64, want, file string) (*descriptorFile, error) {
	if i := bytes.IndexByte(text, 0); i >= 0 {
		text = text[:i]
	}
	d := &descriptorFile{}
	extents := 0
	for n, line := range strings.Split(string(text), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || line[0] == '#' {
			continue
		}
		fields := strings.Fields(line)
		switch fields[0] {
		case "RW", "RDONLY", "NOACCESS":
			extents++
			if extents > 1 {
				return nil, refuse("descriptor has more than one extent: only a single-file VMDK can be deployed")
			}
			name, err := checkExtent(line, capacity, file)
			if err != nil {
				return nil, err
			}
			d.extentFile = name
			continue
		}
		key, value, ok := strings.Cut(line, "=")
		if !ok {
			return nil, refuse("descriptor line %d is neither a setting nor an extent: %.80q", n+1, line)
		}
		key = strings.TrimSpace(key)
		value = strings.Trim(strings.TrimSpace(value), `"`)
		switch strings.ToLower(key) {
		case "version":
			if value != "1" && value != "2" && value != "3" {
				return nil, refuse("descriptor version %.20q (byoi reads versions 1 to 3)", value)
			}
		case "createtype":
			d.createType = value
		case "parentcid":
			if !strings.EqualFold(value, "ffffffff") {
				return nil, refuse("parentCID is %.20q: this is a delta disk that needs its parent", value)
			}
		case "parentfilenamehint":
			return nil, refuse("descriptor names a parent file (parentFileNameHint): byoi never opens other files")
		case "changetrackpath":
			return nil, refuse("descriptor names a change tracking file (changeTrackPath): byoi never opens other files")
		}
	}
	if d.createType == "" {
		return nil, refuse("descriptor has no createType")
	}
	if d.createType != want {
		return nil, refuse("descriptor createType %.40q does not match the sparse header, which is %s", d.createType, want)
	}
	if extents == 0 {
		return nil, refuse("descriptor has no extent line")
	}
	return d, nil
}

// checkExtent checks one extent line, e.g. `RW 16777216 SPARSE
// "disk.vmdk"`, and returns its file name.
func checkExtent(line string, capacity uint64, file string) (string, error) {
	q1 := strings.IndexByte(line, '"')
	q2 := strings.LastIndexByte(line, '"')
	if q1 < 0 || q2 <= q1 {
		return "", refuse("extent line without a quoted file name: %.80q", line)
	}
	head := strings.Fields(line[:q1])
	name := line[q1+1 : q2]
	tail := strings.TrimSpace(line[q2+1:])
	if len(head) != 3 {
		return "", refuse("malformed extent line: %.80q", line)
	}
	access, typ := head[0], head[2]
	if access == "NOACCESS" {
		return "", refuse("extent is NOACCESS")
	}
	if typ != "SPARSE" {
		return "", refuse("extent of type %.20s names file %.80q: only a sparse VMDK holding its own data can be deployed, byoi never opens other files", typ, name)
	}
	if tail != "" {
		return "", refuse("sparse extent line with an offset: %.80q", line)
	}
	sectors, err := strconv.ParseUint(head[1], 10, 64)
	if err != nil || sectors != capacity {
		return "", refuse("extent of %.20s sectors does not match the header's capacity of %d sectors", head[1], capacity)
	}
	if !PlainName(name) {
		return "", refuse("extent names file %.80q, not this VMDK: byoi never opens other files", name)
	}
	if file != "" && name != file {
		return "", refuse("extent names file %.80q, not this VMDK (%.80q): byoi never opens other files", name, file)
	}
	return name, nil
}

// PlainName reports whether name is a plain file name: no directory, no
// drive, not "." or "..", no control characters.
func PlainName(name string) bool {
	if name == "" || name == "." || name == ".." || len(name) > 255 {
		return false
	}
	for _, r := range name {
		if r < 0x20 || r == 0x7f || r == '/' || r == '\\' || r == ':' {
			return false
		}
	}
	return true
}

// CheckHeader validates the sparse header and the embedded descriptor
// of a VMDK from its first bytes (head must reach the end of the
// descriptor: 64 KiB always does for the files VMware, VirtualBox and
// qemu-img write). file is the VMDK's own name (or "" when unknown), which
// its single extent must name; maxCapacity (> 0) refuses larger disks with
// a *SizeError. Other refusals are *Error. It does not look past the
// descriptor.
func CheckHeader(head []byte, file string, maxCapacity int64) (*Info, error) {
	if bytes.HasPrefix(head, []byte(descriptorMagic)) {
		return nil, refuse("this is a descriptor-only VMDK: its data lives in the files it names, which byoi never opens")
	}
	h, err := parseHeader(head)
	if err != nil {
		return nil, err
	}
	ct, err := h.check(maxCapacity)
	if err != nil {
		return nil, err
	}
	start, end := h.descOffset*sectorBytes, (h.descOffset+h.descSize)*sectorBytes
	if end > uint64(len(head)) {
		return nil, refuse("descriptor at bytes %d..%d lies past the %d bytes given", start, end, len(head))
	}
	d, err := parseDescriptor(head[start:end], h.capacity, ct, file)
	if err != nil {
		return nil, err
	}
	return h.info(ct, d), nil
}

func (h *sparseHeader) info(ct string, d *descriptorFile) *Info {
	return &Info{
		CreateType:  ct,
		Version:     int(h.version),
		Capacity:    int64(h.capacity) * sectorBytes,
		GrainSize:   int64(h.grainSize) * sectorBytes,
		Compressed:  h.compress == compressDeflate,
		FooterAtEnd: h.gdOffset == gDAtEnd,
		ExtentFile:  d.extentFile,
	}
}

// Grain is one grain read from the stream: at off in the virtual disk,
// either compressed (comp holds the zlib stream) or raw (data holds the
// grain, cut at the capacity).
type Grain struct {
	Off        int64  // the grain's byte offset in the disk
	Compressed bool   // Comp holds it compressed (Inflater inflates it), else Data holds it
	Comp       []byte // the caller's buffer, capacity Stream.MaxCompressed (compressed extents)
	Data       []byte // the caller's buffer, capacity Stream.GrainBytes
}

// item is a table or grain of a monolithicSparse extent waiting for
// the stream to reach it.
type item struct {
	sector uint64
	index  uint32 // GT: its index in the GD; grain: its index in the disk
	kind   uint8
}

const (
	itemGD = iota
	itemGT
	itemGrain
)

// Stream reads a sparse VMDK extent front to back, never seeking:
// stream-optimized grains as their markers come, monolithicSparse grains as
// the stream reaches the offsets its grain tables give. It refuses
// anything inconsistent before handing it out: grains past the capacity,
// twice the same grain, tables or grains that would need seeking
// backwards.
type Stream struct {
	r    *bufio.Reader
	pos  int64 // bytes consumed
	max  int64 // bytes the extent may span (<= 0: no limit)
	hdr  sparseHeader
	info Info

	grainBytes int64
	nGrains    int64
	seen       []uint64 // one bit per grain handed out
	sec        [sectorBytes]byte
	gt         [gtEntries * 4]byte
	done       bool

	// stream-optimized
	gdData      int64 // sector where the GD marker's data began, or -1
	footer      bool
	markerCount int64

	// monolithicSparse
	pending []item // a min-heap on sector
	grainsQ int64  // grain items queued so far
}

// Open reads the header and the embedded descriptor from r and
// checks them (see CheckHeader). limit bounds the bytes the extent may
// span (its file size, when known; <= 0: no bound).
func Open(r io.Reader, file string, maxCapacity, limit int64) (*Stream, error) {
	bufSize := int64(256 << 10)
	if limit > 0 {
		bufSize = min(max(limit, 4096), bufSize)
	}
	s := &Stream{r: bufio.NewReaderSize(r, int(bufSize)), max: limit, gdData: -1}
	if b, _ := s.r.Peek(len(descriptorMagic)); string(b) == descriptorMagic {
		return nil, refuse("this is a descriptor-only VMDK: its data lives in the files it names, which byoi never opens")
	}
	if err := s.readFull(s.sec[:]); err != nil {
		return nil, err
	}
	h, err := parseHeader(s.sec[:])
	if err != nil {
		return nil, err
	}
	ct, err := h.check(maxCapacity)
	if err != nil {
		return nil, err
	}
	s.hdr = h
	if err := s.skipTo(int64(h.descOffset)*sectorBytes, "the descriptor"); err != nil {
		return nil, err
	}
	desc := make([]byte, h.descSize*sectorBytes)
	if err := s.readFull(desc); err != nil {
		return nil, err
	}
	d, err := parseDescriptor(desc, h.capacity, ct, file)
	if err != nil {
		return nil, err
	}
	s.info = *h.info(ct, d)
	s.grainBytes = s.info.GrainSize
	s.nGrains = h.grains()
	s.seen = make([]uint64, (s.nGrains+63)/64)
	if ct == StreamOptimized {
		if err := s.skipTo(int64(h.overHead)*sectorBytes, "the first grain"); err != nil {
			return nil, err
		}
	} else {
		s.push(item{sector: h.gdOffset, kind: itemGD})
	}
	return s, nil
}

// maxCompressed bounds a compressed grain: zlib stores incompressible data
// with a few bytes per 16 KiB block, qemu reads at most two grains.
// Info is what the header and the descriptor say about the disk.
func (s *Stream) Info() Info { return s.info }

// GrainBytes is the size of a grain in bytes.
func (s *Stream) GrainBytes() int64 { return s.grainBytes }

// SetLimit bounds the bytes the extent may span from its start (<= 0: no
// bound), for a source whose size is known only once the header was read
// (a gzip-compressed member).
func (s *Stream) SetLimit(n int64) { s.max = n }

// MaxCompressed is the largest compressed grain the stream accepts.
func (s *Stream) MaxCompressed() int64 { return 2 * s.grainBytes }

// readFull reads exactly len(p) bytes; the stream ending first is a
// truncated VMDK.
func (s *Stream) readFull(p []byte) error {
	if s.max > 0 && s.pos+int64(len(p)) > s.max {
		return refuse("data at byte %d runs past the end of the file (%d bytes)", s.pos+int64(len(p)), s.max)
	}
	n, err := io.ReadFull(s.r, p)
	s.pos += int64(n)
	if err != nil {
		return s.readErr(err)
	}
	return nil
}

func (s *Stream) readErr(err error) error {
	if err == io.EOF || err == io.ErrUnexpectedEOF {
		return &Error{Reason: fmt.Sprintf("truncated after %d bytes", s.pos), Err: io.ErrUnexpectedEOF}
	}
	return err // the source's own error, unchanged
}

// skipTo discards bytes up to off; off before the current position needs
// seeking backwards.
func (s *Stream) skipTo(off int64, what string) error {
	if off < s.pos {
		return refuse("%s at byte %d lies before byte %d, already read: this layout needs seeking backwards and cannot be streamed", what, off, s.pos)
	}
	if s.max > 0 && off > s.max {
		return refuse("%s at byte %d lies past the end of the file (%d bytes)", what, off, s.max)
	}
	for off > s.pos {
		n, err := s.r.Discard(int(min(off-s.pos, 1<<30)))
		s.pos += int64(n)
		if err != nil {
			return s.readErr(err)
		}
	}
	return nil
}

// markGrain records grain i as handed out; twice is refused.
func (s *Stream) markGrain(i int64) error {
	w, b := i/64, uint64(1)<<(i%64)
	if s.seen[w]&b != 0 {
		return refuse("grain at byte %d of the disk appears twice", i*s.grainBytes)
	}
	s.seen[w] |= b
	return nil
}

// HasGrain reports whether grain i was handed out.
func (s *Stream) HasGrain(i int64) bool {
	return i >= 0 && i < s.nGrains && s.seen[i/64]&(1<<(i%64)) != 0
}

// Next reads the next grain into g (whose comp and data buffers it
// reuses). It returns io.EOF at the end of the VMDK's data.
func (s *Stream) Next(g *Grain) error {
	if s.done {
		return io.EOF
	}
	if s.info.CreateType == StreamOptimized {
		return s.nextMarker(g)
	}
	return s.nextSparse(g)
}

// nextMarker reads markers up to the next grain (VDF 5.0,
// "Stream-Optimized Compressed Sparse Extents"): each marker starts a
// sector; a grain marker is {lba uint64, size uint32, data[size]}, a
// metadata marker {numSectors uint64, 0 uint32, type uint32} followed by
// numSectors sectors of metadata. The grain tables, directory and footer
// are redundant for a sequential reader (they locate the grains the
// markers already announced): their sizes are checked and, for the
// footer, its header against the first one, and they are skipped.
func (s *Stream) nextMarker(g *Grain) error {
	le := binary.LittleEndian
	for {
		n, err := io.ReadFull(s.r, s.sec[:])
		s.pos += int64(n)
		if err == io.EOF && !s.footerRequired() {
			// qemu-img ends the file after the last grain (its tables
			// are at the front): the end of the data is the end.
			s.done = true
			return io.EOF
		}
		if err != nil {
			if err == io.EOF || err == io.ErrUnexpectedEOF {
				return &Error{Reason: fmt.Sprintf("truncated after %d bytes, before the end-of-stream marker", s.pos), Err: io.ErrUnexpectedEOF}
			}
			return err
		}
		if s.max > 0 && s.pos > s.max {
			return refuse("marker at byte %d runs past the end of the file (%d bytes)", s.pos-sectorBytes, s.max)
		}
		s.markerCount++
		val := le.Uint64(s.sec[0:])
		size := le.Uint32(s.sec[8:])
		if size != 0 {
			return s.readGrain(g, val, int64(size))
		}
		typ := le.Uint32(s.sec[12:])
		at := s.pos - sectorBytes
		switch typ {
		case markerEOS:
			if val != 0 {
				return refuse("end-of-stream marker at byte %d has a size of %d sectors", at, val)
			}
			if s.footerRequired() {
				return refuse("stream ends without the footer its header announced (gdOffset GD_AT_END)")
			}
			s.done = true
			return io.EOF
		case markerGT:
			if val != gtEntries*4/sectorBytes {
				return refuse("grain table marker at byte %d announces %d sectors, want %d", at, val, gtEntries*4/sectorBytes)
			}
		case markerGD:
			if int64(val) != s.hdr.gdSectors() {
				return refuse("grain directory marker at byte %d announces %d sectors, want %d", at, val, s.hdr.gdSectors())
			}
			s.gdData = s.pos / sectorBytes
		case markerFooter:
			if val != 1 {
				return refuse("footer marker at byte %d announces %d sectors, want 1", at, val)
			}
			if err := s.readFooter(); err != nil {
				return err
			}
			continue
		case markerUnspecified:
			continue
		default:
			return refuse("unknown marker type %d at byte %d", typ, at)
		}
		if err := s.skipTo(s.pos+int64(val)*sectorBytes, "metadata"); err != nil {
			return err
		}
	}
}

// footerRequired: VMware's layout (GD_AT_END) ends with a footer; a
// stream without it was cut.
func (s *Stream) footerRequired() bool { return s.info.FooterAtEnd && !s.footer }

// readFooter reads the footer (a copy of the header with the real
// gdOffset) and checks it against the first header.
func (s *Stream) readFooter() error {
	at := s.pos
	if err := s.readFull(s.sec[:]); err != nil {
		return err
	}
	if s.footer {
		return refuse("second footer at byte %d", at)
	}
	f, err := parseHeader(s.sec[:])
	if err != nil {
		return refuse("footer at byte %d: %v", at, err)
	}
	h := s.hdr
	if f.version != h.version || f.capacity != h.capacity || f.grainSize != h.grainSize ||
		f.numGTEs != h.numGTEs || f.compress != h.compress || f.descOffset != h.descOffset ||
		f.descSize != h.descSize || f.overHead != h.overHead {
		return refuse("footer at byte %d does not match the header", at)
	}
	if f.gdOffset == gDAtEnd {
		return refuse("footer at byte %d has gdOffset GD_AT_END too", at)
	}
	if s.gdData >= 0 && int64(f.gdOffset) != s.gdData {
		return refuse("footer says the grain directory is at sector %d, it was at sector %d", f.gdOffset, s.gdData)
	}
	s.footer = true
	return nil
}

// readGrain reads the compressed grain whose marker is in s.sec.
func (s *Stream) readGrain(g *Grain, lba uint64, size int64) error {
	at := s.pos - sectorBytes
	if lba%s.hdr.grainSize != 0 || lba >= s.hdr.capacity {
		if lba >= s.hdr.capacity {
			return refuse("grain at sector %d (marker at byte %d) lies past the capacity of %d sectors", lba, at, s.hdr.capacity)
		}
		return refuse("grain at sector %d (marker at byte %d) is not aligned to the grain size of %d sectors", lba, at, s.hdr.grainSize)
	}
	if size > s.MaxCompressed() {
		return refuse("compressed grain of %d bytes at byte %d is larger than twice the grain size", size, at)
	}
	if err := s.markGrain(int64(lba / s.hdr.grainSize)); err != nil {
		return err
	}
	if int64(cap(g.Comp)) < size {
		g.Comp = make([]byte, size)
	}
	g.Comp = g.Comp[:size]
	first := min(size, sectorBytes-12)
	copy(g.Comp, s.sec[12:12+first])
	if err := s.readFull(g.Comp[first:]); err != nil {
		return err
	}
	// The marker and its data fill whole sectors.
	if err := s.skipTo(at+(12+size+sectorBytes-1)/sectorBytes*sectorBytes, "padding"); err != nil {
		return err
	}
	g.Off = int64(lba) * sectorBytes
	g.Compressed = true
	g.Data = g.Data[:0]
	return nil
}

// push and pop keep s.pending a min-heap on sector.
func (s *Stream) push(it item) {
	s.pending = append(s.pending, it)
	i := len(s.pending) - 1
	for i > 0 {
		p := (i - 1) / 2
		if s.pending[p].sector <= s.pending[i].sector {
			break
		}
		s.pending[p], s.pending[i] = s.pending[i], s.pending[p]
		i = p
	}
}

func (s *Stream) pop() item {
	h := s.pending
	it := h[0]
	last := len(h) - 1
	h[0] = h[last]
	h = h[:last]
	for i := 0; ; {
		l, r, m := 2*i+1, 2*i+2, i
		if l < len(h) && h[l].sector < h[m].sector {
			m = l
		}
		if r < len(h) && h[r].sector < h[m].sector {
			m = r
		}
		if m == i {
			break
		}
		h[i], h[m] = h[m], h[i]
		i = m
	}
	s.pending = h
	return it
}

// nextSparse hands out the grains of a monolithicSparse extent in file
// order: the grain directory and the grain tables are read when the stream
// reaches them (they precede the grains in the files VMware, VirtualBox
// and qemu-img write), and each allocated grain table entry is queued
// until the stream reaches the grain. Anything the stream has already
// passed (a table after its grains, two entries sharing a grain) needs
// seeking backwards and is refused.
func (s *Stream) nextSparse(g *Grain) error {
	le := binary.LittleEndian
	for {
		if len(s.pending) == 0 {
			s.done = true
			return io.EOF
		}
		it := s.pop()
		if it.sector > 1<<40 {
			return refuse("table or grain at sector %d lies past any file", it.sector)
		}
		off := int64(it.sector) * sectorBytes
		switch it.kind {
		case itemGD:
			if err := s.skipTo(off, "the grain directory"); err != nil {
				return err
			}
			gd := make([]byte, s.hdr.gdSectors()*sectorBytes)
			if err := s.readFull(gd); err != nil {
				return err
			}
			nGT := (s.nGrains + gtEntries - 1) / gtEntries
			for i := int64(0); i < nGT; i++ {
				if e := le.Uint32(gd[4*i:]); e != 0 {
					s.push(item{sector: uint64(e), index: uint32(i), kind: itemGT})
				}
			}
		case itemGT:
			if err := s.skipTo(off, fmt.Sprintf("grain table %d", it.index)); err != nil {
				return err
			}
			buf := s.gt[:]
			if err := s.readFull(buf); err != nil {
				return err
			}
			for j := int64(0); j < gtEntries; j++ {
				e := le.Uint32(buf[4*j:])
				if e == 0 || (e == 1 && s.hdr.flags&flagZeroGrain != 0) {
					continue // unallocated, or a zeroed grain: reads as zeros
				}
				grain := int64(it.index)*gtEntries + j
				if grain >= s.nGrains {
					return refuse("grain table %d maps a grain past the capacity of %d sectors", it.index, s.hdr.capacity)
				}
				s.grainsQ++
				if s.grainsQ > maxPending || (s.max > 0 && s.grainsQ > s.max/s.grainBytes+1) {
					return refuse("more allocated grains (%d) than the file can hold or byoi streams", s.grainsQ)
				}
				s.push(item{sector: uint64(e), index: uint32(grain), kind: itemGrain})
			}
		case itemGrain:
			if err := s.skipTo(off, fmt.Sprintf("grain %d", it.index)); err != nil {
				return err
			}
			if err := s.markGrain(int64(it.index)); err != nil {
				return err
			}
			gOff := int64(it.index) * s.grainBytes
			n := min(s.grainBytes, s.info.Capacity-gOff)
			if int64(cap(g.Data)) < s.grainBytes {
				g.Data = make([]byte, s.grainBytes)
			}
			g.Data = g.Data[:s.grainBytes]
			if err := s.readFull(g.Data); err != nil {
				return err
			}
			g.Data = g.Data[:n]
			g.Off = gOff
			g.Compressed = false
			g.Comp = g.Comp[:0]
			return nil
		}
	}
}

// Drain reads what follows the end of the VMDK's data to the end of r:
// padding, which must be zeros and at most maxTrailing bytes.
func (s *Stream) Drain() error {
	start := s.pos
	buf := make([]byte, 32<<10)
	for {
		n, err := s.r.Read(buf)
		if !imaging.AllZero(buf[:n]) {
			return refuse("data follows the end of the VMDK at byte %d", start)
		}
		s.pos += int64(n)
		if s.pos-start > maxTrailing {
			return refuse("more than %d bytes follow the end of the VMDK at byte %d", maxTrailing, start)
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return s.readErr(err)
		}
	}
}

// Inflater inflates compressed grains with one reused zlib decoder.
type Inflater struct {
	zr io.ReadCloser
	br bytes.Reader
}

// Inflate decompresses the zlib stream comp into dst (the grain buffer, a
// whole grain long) and returns the bytes it produced. A stream that would
// produce more than len(dst) bytes is a decompression bomb and refused
// without inflating further; a corrupt stream (bad data, bad Adler-32) is
// refused.
func (f *Inflater) Inflate(dst, comp []byte) (int, error) {
	f.br.Reset(comp)
	if f.zr == nil {
		zr, err := zlib.NewReader(&f.br)
		if err != nil {
			return 0, err
		}
		f.zr = zr
	} else if err := f.zr.(zlib.Resetter).Reset(&f.br, nil); err != nil {
		return 0, err
	}
	n, empty := 0, 0
	for n < len(dst) {
		k, err := f.zr.Read(dst[n:])
		n += k
		if err == io.EOF {
			return n, nil // the stream ended (its checksum verified)
		}
		if err != nil {
			return n, err
		}
		if k == 0 {
			if empty++; empty > 100 {
				return n, io.ErrNoProgress
			}
		}
	}
	// dst is full: the stream must end here.
	var one [1]byte
	for range 100 {
		k, err := f.zr.Read(one[:])
		if k > 0 {
			return n, errBomb
		}
		if err == io.EOF {
			return n, nil
		}
		if err != nil {
			return n, err
		}
	}
	return n, io.ErrNoProgress
}

var errBomb = errors.New("inflates past the grain size (a decompression bomb)")
