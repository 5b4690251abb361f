// Package qcow2 checks and converts qcow2 images: Stream converts an image
// whose tables come before its data as it downloads (stream.go), checking
// each table as it arrives; otherwise Check refuses what is unsafe (a
// backing file, an external data file, encryption) or corrupt before
// anything is written, Stage keeps the downloaded image in memory, on the
// target's tail or in a directory, and Convert writes its virtual disk onto
// an imaging.Target in parallel. go-qcow2reader reads the clusters,
// with our zlib and zstd decompressors (RegisterDecompressors). Convert only
// writes: crash safety is the imaging.Guard's.
package qcow2

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/byoi/byoi/imaging"
)

// Layout constants from the qcow2 specification (qemu docs/interop/qcow2.txt).
const (
	magic          = "QFI\xfb"
	v2HeaderLen    = 72  // version 2 header: bytes 0..71
	v3HeaderLen    = 104 // version 3 header without the compression type
	minClusterBits = 9   // qemu MIN_CLUSTER_BITS
	maxClusterBits = 21  // qemu MAX_CLUSTER_BITS (2 MiB clusters)
	// maxL1Bytes is qemu's QCOW_MAX_L1_SIZE (32 MiB): the L1 table is
	// read whole, so this bounds memory.
	maxL1Bytes = 32 << 20
	// maxRefTableBytes is qemu's QCOW_MAX_REFTABLE_SIZE (8 MiB).
	maxRefTableBytes = 8 << 20
	// maxSnapshots is qemu's QCOW_MAX_SNAPSHOTS.
	maxSnapshots = 65536
	// maxVirtualSize refuses absurd virtual sizes (64 PiB).
	maxVirtualSize = 1 << 56

	// Incompatible feature bits (spec, "incompatible_features").
	incDirty      = 1 << 0
	incCorrupt    = 1 << 1
	incExtData    = 1 << 2
	incCompress   = 1 << 3
	incExtendedL2 = 1 << 4
	incKnown      = incDirty | incCorrupt | incExtData | incCompress | incExtendedL2

	// Header extension types (spec, "Header extensions").
	extEnd          = 0x00000000
	extBackingFmt   = 0xe2792aca
	extFeatureNames = 0x6803f857
	extBitmaps      = 0x23852875
	extCrypto       = 0x0537be77
	extDataFile     = 0x44415441

	// L1/L2 entry masks (spec, "Cluster mapping").
	l1OffsetMask = 0x00fffffffffffe00
	l2OffsetMask = 0x00fffffffffffe00
	l2Compressed = 1 << 62
	l2ZeroFlag   = 1 << 0
	descMask     = (1 << 62) - 1
	l2Reserved   = 0x3f000000000001fe // standard cluster descriptor: bits 1-8 and 56-61
)

// ErrRefused is matched (errors.Is) by every refusal of a qcow2 image: unsafe
// (backing file, external data file, encryption) or corrupt.
var ErrRefused = errors.New("qcow2 image refused")

// Error is a qcow2 image byoi refuses to convert, with the reason.
type Error struct {
	Reason string
	Err    error
}

func (e *Error) Error() string {
	reason := e.Reason
	if e.Err != nil {
		reason += ": " + e.Err.Error()
	}
	return "qcow2 image refused: " + reason
}

// Is makes errors.Is(err, ErrRefused) true.
func (e *Error) Is(target error) bool { return target == ErrRefused }

func (e *Error) Unwrap() error { return e.Err }

func refuse(format string, args ...any) error {
	return &Error{Reason: fmt.Sprintf(format, args...)}
}

// Info is what the qcow2 header says about an image.
type Info struct {
	Version      int
	HeaderLength uint32
	ClusterBits  uint32
	ClusterSize  int64
	VirtualSize  int64
	// Compression is "zlib" (raw deflate) or "zstd".
	Compression string
	ExtendedL2  bool
	// Dirty: the image was not closed cleanly (refcounts may be stale; the
	// guest data it maps is still what qemu would read).
	Dirty                 bool
	IncompatibleFeatures  uint64
	CompatibleFeatures    uint64
	AutoclearFeatures     uint64
	RefcountOrder         uint32
	CryptMethod           uint32
	L1Size                uint32
	L1Offset              int64
	RefcountTableOffset   int64
	RefcountTableClusters uint32
	NbSnapshots           uint32
	SnapshotsOffset       int64
	HasBackingFile        bool
	HasExternalDataFile   bool
	// HeaderExtensions lists the extension types found (Check only).
	HeaderExtensions []uint32
	// AllocatedClusters counts the data clusters the L2 tables map
	// (Check only).
	AllocatedClusters  int64
	CompressedClusters int64

	// checked is the file size Check accepted this image at (0: the
	// header alone was read): Convert converts nothing else.
	checked int64
}

// l2EntrySize is the size of one L2 entry: 8, or 16 with extended L2.
func (i *Info) l2EntrySize() int64 {
	if i.ExtendedL2 {
		return 16
	}
	return 8
}

// l1Needed is the number of L1 entries the virtual size needs.
func (i *Info) l1Needed() int64 {
	perL2 := i.ClusterSize / i.l2EntrySize() * i.ClusterSize // bytes one L2 table maps
	return (i.VirtualSize + perL2 - 1) / perL2
}

// ParseHeader reads the header fields from the first bytes of a qcow2
// image (at least 112 bytes for version 3, 72 for version 2). It refuses
// only what makes the header unreadable: use CheckHeader or Check
// for the safety checks.
func ParseHeader(head []byte) (*Info, error) {
	if len(head) < 4 || string(head[:4]) != magic {
		return nil, refuse("not a qcow2 image (no QFI\\xfb magic)")
	}
	if len(head) < v2HeaderLen {
		return nil, refuse("header truncated (%d bytes)", len(head))
	}
	be := binary.BigEndian
	info := &Info{
		Version:               int(be.Uint32(head[4:])),
		ClusterBits:           be.Uint32(head[20:]),
		CryptMethod:           be.Uint32(head[32:]),
		L1Size:                be.Uint32(head[36:]),
		RefcountTableClusters: be.Uint32(head[56:]),
		NbSnapshots:           be.Uint32(head[60:]),
		HeaderLength:          v2HeaderLen,
		RefcountOrder:         4,
		Compression:           "zlib",
	}
	backingOff := be.Uint64(head[8:])
	info.HasBackingFile = backingOff != 0
	size := be.Uint64(head[24:])
	l1Off := be.Uint64(head[40:])
	refOff := be.Uint64(head[48:])
	snapOff := be.Uint64(head[64:])
	if size > maxVirtualSize {
		return nil, refuse("virtual size %d bytes is absurd", size)
	}
	for _, o := range []uint64{l1Off, refOff, snapOff} {
		if o > 1<<62 {
			return nil, refuse("table offset %#x is absurd", o)
		}
	}
	info.VirtualSize = int64(size)
	info.L1Offset, info.RefcountTableOffset, info.SnapshotsOffset = int64(l1Off), int64(refOff), int64(snapOff)
	switch info.Version {
	case 2:
	case 3:
		if len(head) < v3HeaderLen {
			return nil, refuse("version 3 header truncated (%d bytes)", len(head))
		}
		info.IncompatibleFeatures = be.Uint64(head[72:])
		info.CompatibleFeatures = be.Uint64(head[80:])
		info.AutoclearFeatures = be.Uint64(head[88:])
		info.RefcountOrder = be.Uint32(head[96:])
		info.HeaderLength = be.Uint32(head[100:])
		if info.HeaderLength < v3HeaderLen || info.HeaderLength%8 != 0 {
			return nil, refuse("header length %d is invalid", info.HeaderLength)
		}
		if info.HeaderLength > v3HeaderLen {
			if len(head) < v3HeaderLen+1 {
				return nil, refuse("header truncated before the compression type")
			}
			switch head[104] {
			case 0:
				info.Compression = "zlib"
			case 1:
				info.Compression = "zstd"
			default:
				return nil, refuse("unknown compression type %d (only zlib and zstd are supported)", head[104])
			}
		}
		info.Dirty = info.IncompatibleFeatures&incDirty != 0
		info.ExtendedL2 = info.IncompatibleFeatures&incExtendedL2 != 0
		info.HasExternalDataFile = info.IncompatibleFeatures&incExtData != 0
	default:
		return nil, refuse("version %d is not supported (only 2 and 3)", info.Version)
	}
	if info.ClusterBits < minClusterBits || info.ClusterBits > maxClusterBits {
		return nil, refuse("cluster_bits %d is outside %d..%d", info.ClusterBits, minClusterBits, maxClusterBits)
	}
	info.ClusterSize = 1 << info.ClusterBits
	return info, nil
}

// CheckHeader parses head like ParseHeader and applies every check
// that needs only the header: no backing file, no external data file, no
// encryption, only known incompatible features, a sane virtual size that fits
// the target (targetSize 0 skips that check) and a sane L1 table size. The
// pipeline may call it on the first bytes of a stream to refuse early.
func CheckHeader(head []byte, targetName string, targetSize int64) (*Info, error) {
	info, err := ParseHeader(head)
	if err != nil {
		return nil, err
	}
	if info.HasBackingFile {
		// Never follow it: the name could point at any local file.
		return nil, refuse("it has a backing file; only self-contained images are supported (qemu-img convert -O qcow2 flattens it)")
	}
	if info.CryptMethod != 0 {
		return nil, refuse("it is encrypted (crypt_method %d)", info.CryptMethod)
	}
	inc := info.IncompatibleFeatures
	if inc&incExtData != 0 {
		return nil, refuse("it uses an external data file")
	}
	if inc&incCorrupt != 0 {
		return nil, refuse("qemu marked it corrupt (incompatible feature bit 1)")
	}
	if unknown := inc &^ incKnown; unknown != 0 {
		return nil, refuse("unknown incompatible features %#x", unknown)
	}
	if info.Compression == "zstd" && inc&incCompress == 0 {
		return nil, refuse("compression type zstd without the compression type feature bit")
	}
	if info.RefcountOrder > 6 {
		return nil, refuse("refcount_order %d is invalid", info.RefcountOrder)
	}
	if int64(info.HeaderLength) > info.ClusterSize {
		return nil, refuse("header length %d is larger than a cluster", info.HeaderLength)
	}
	if info.VirtualSize <= 0 {
		return nil, refuse("virtual size is 0")
	}
	if targetSize > 0 && info.VirtualSize > targetSize {
		return nil, &imaging.SizeError{ImageSize: info.VirtualSize, TargetName: targetName, TargetSize: targetSize}
	}
	needed := info.l1Needed()
	if int64(info.L1Size)*8 > maxL1Bytes {
		return nil, refuse("L1 table of %d entries is too large", info.L1Size)
	}
	if int64(info.L1Size) < needed {
		return nil, refuse("L1 table of %d entries is too small for the virtual size (needs %d)", info.L1Size, needed)
	}
	// A larger L1 table than the virtual size needs is legitimate:
	// `qemu-img resize --shrink` keeps it. Its extra entries are never
	// used (nor read by Check); it is bounded by qemu's limit above
	// and must lie inside the file (Check).
	if info.L1Offset == 0 || info.L1Offset%info.ClusterSize != 0 {
		return nil, refuse("L1 table offset %#x is not cluster aligned", info.L1Offset)
	}
	if info.RefcountTableOffset == 0 || info.RefcountTableOffset%info.ClusterSize != 0 {
		return nil, refuse("refcount table offset %#x is not cluster aligned", info.RefcountTableOffset)
	}
	if info.RefcountTableClusters == 0 || int64(info.RefcountTableClusters)*info.ClusterSize > maxRefTableBytes {
		return nil, refuse("refcount table of %d clusters is invalid", info.RefcountTableClusters)
	}
	if info.NbSnapshots > maxSnapshots {
		return nil, refuse("%d snapshots is too many", info.NbSnapshots)
	}
	if info.NbSnapshots > 0 && (info.SnapshotsOffset == 0 || info.SnapshotsOffset%info.ClusterSize != 0) {
		return nil, refuse("snapshot table offset %#x is not cluster aligned", info.SnapshotsOffset)
	}
	return info, nil
}

// Check validates an untrusted qcow2 image before go-qcow2reader opens
// anything: the header (CheckHeader), the header extensions, that every
// table lies inside the file (fileSize is the staged size), and every L1 and
// L2 entry: tables and data clusters aligned and inside the file. It reads
// the first cluster, the L1 table and each L2 table once, one at a time, so
// memory stays below a few MiB. targetSize 0 skips the size check.
func Check(r io.ReaderAt, fileSize int64, targetName string, targetSize int64) (*Info, error) {
	if fileSize < v2HeaderLen {
		return nil, refuse("file of %d bytes is too short for a qcow2 header", fileSize)
	}
	head := make([]byte, min(fileSize, 4096))
	if _, err := r.ReadAt(head, 0); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("read qcow2 header: %w", err)
	}
	info, err := CheckHeader(head, targetName, targetSize)
	if err != nil {
		return nil, err
	}
	cs := info.ClusterSize
	if fileSize < cs && fileSize < int64(info.HeaderLength) {
		return nil, refuse("file of %d bytes is truncated", fileSize)
	}
	// Header extensions live in the rest of the first cluster.
	first := make([]byte, min(cs, fileSize))
	if _, err := r.ReadAt(first, 0); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("read qcow2 header: %w", err)
	}
	if err := checkExtensions(info, first); err != nil {
		return nil, err
	}
	within := func(what string, off, n int64) error {
		if off < 0 || n < 0 || off > fileSize || n > fileSize-off {
			return refuse("%s at %#x (%d bytes) lies past the end of the file (%d bytes): the image is truncated or corrupt", what, off, n, fileSize)
		}
		return nil
	}
	if err := within("L1 table", info.L1Offset, int64(info.L1Size)*8); err != nil {
		return nil, err
	}
	// The last cluster of a file may be short (qemu does not pad it).
	if err := within("refcount table", info.RefcountTableOffset, min(int64(info.RefcountTableClusters)*cs, fileSize-info.RefcountTableOffset+1)); err != nil {
		return nil, err
	}
	if info.NbSnapshots > 0 {
		if err := within("snapshot table", info.SnapshotsOffset, 1); err != nil {
			return nil, err
		}
	}
	if err := checkTables(r, fileSize, info); err != nil {
		return nil, err
	}
	info.checked = fileSize
	return info, nil
}

// isoDescriptor is where an ISO 9660 image's first volume descriptor
// has its "CD001" (sector 16 of 2048 bytes, plus its type byte).
const isoDescriptor = 16*2048 + 1

// checkExtensions walks the header extensions (spec: after the header, in
// the first cluster, each 8-byte aligned) and refuses an external data file,
// an encryption header, or a header cluster that is also an ISO image.
func checkExtensions(info *Info, first []byte) error {
	// A qcow2 whose header cluster also holds an ISO 9660 volume
	// descriptor is two images in one: a reader of the ISO sees other
	// contents than qemu does. OpenStack's format inspector refuses such
	// a file ("Multiple formats detected"); qemu-img leaves the rest of
	// the header cluster zero.
	if len(first) >= isoDescriptor+5 && string(first[isoDescriptor:isoDescriptor+5]) == "CD001" {
		return refuse("it is also an ISO 9660 image (a volume descriptor at offset %d, inside the qcow2 header cluster)", isoDescriptor)
	}
	be := binary.BigEndian
	off := int(info.HeaderLength)
	for {
		if off+8 > len(first) {
			// qemu stops at the end of the cluster too, but an image whose
			// extension area is cut by the end of the file is truncated.
			if len(first) < int(info.ClusterSize) {
				return refuse("header extensions run past the end of the file")
			}
			return nil
		}
		typ, n := be.Uint32(first[off:]), int(be.Uint32(first[off+4:]))
		if typ == extEnd {
			return nil
		}
		if len(info.HeaderExtensions) >= 1024 {
			return refuse("too many header extensions")
		}
		info.HeaderExtensions = append(info.HeaderExtensions, typ)
		switch typ {
		case extDataFile:
			info.HasExternalDataFile = true
			return refuse("it names an external data file")
		case extCrypto:
			return refuse("it has a full disk encryption header")
		}
		next := off + 8 + (n+7)/8*8
		if n < 0 || next > len(first) {
			return refuse("header extension %#x of %d bytes runs past the first cluster", typ, n)
		}
		off = next
	}
}

// checkTables reads the L1 table and every L2 table it points to and checks
// each entry: L2 tables and data clusters aligned and inside the file,
// compressed clusters inside the file (their last sector may end up to 511
// bytes past it: qemu does not pad the file).
func checkTables(r io.ReaderAt, fileSize int64, info *Info) error {
	be := binary.BigEndian
	cs := info.ClusterSize
	l1 := make([]byte, int64(info.L1Size)*8)
	if err := readFullAt(r, l1, info.L1Offset); err != nil {
		return fmt.Errorf("read qcow2 L1 table: %w", err)
	}
	l2 := make([]byte, cs)
	es := info.l2EntrySize()
	entries := cs / es
	subcs := cs / 32
	x := 62 - (int(info.ClusterBits) - 8) // compressed descriptor: offset bits
	// Each L2 table may be used once by the active L1 table (qemu-img check
	// reports a refcount error otherwise): this also bounds the scan by the
	// file size, whatever the L1 table says.
	seen := make([]uint64, fileSize/cs/64+1)
	for i := range min(int64(info.L1Size), info.l1Needed()) {
		l2Off := int64(be.Uint64(l1[i*8:]) & l1OffsetMask)
		if l2Off == 0 {
			continue
		}
		if l2Off%cs != 0 {
			return refuse("L2 table offset %#x (L1 entry %d) is not cluster aligned", l2Off, i)
		}
		if l2Off >= fileSize || cs > fileSize-l2Off {
			return refuse("L2 table at %#x (L1 entry %d) lies past the end of the file (%d bytes): the image is truncated or corrupt", l2Off, i, fileSize)
		}
		if k := l2Off / cs; seen[k/64]&(1<<(k%64)) != 0 {
			return refuse("L2 table at %#x is used twice by the L1 table", l2Off)
		} else {
			seen[k/64] |= 1 << (k % 64)
		}
		if err := readFullAt(r, l2, l2Off); err != nil {
			return fmt.Errorf("read qcow2 L2 table at %#x: %w", l2Off, err)
		}
		for j := int64(0); j < entries; j++ {
			guest := (i*entries + j) * cs
			if guest >= info.VirtualSize {
				break
			}
			used := min(cs, info.VirtualSize-guest)
			e := be.Uint64(l2[j*es:])
			if e&l2Compressed != 0 {
				desc := e & descMask
				host := int64(desc & (1<<x - 1))
				sectors := int64(desc>>x) + 1
				end := host&^511 + sectors*512
				if host == 0 || host >= fileSize || end-fileSize >= 512 {
					return refuse("compressed cluster at %#x (%d bytes, guest offset %d) lies past the end of the file (%d bytes): the image is truncated or corrupt", host, end-host, guest, fileSize)
				}
				info.CompressedClusters++
				info.AllocatedClusters++
				continue
			}
			host := int64(e & l2OffsetMask)
			if info.ExtendedL2 {
				alloc, zero := be.Uint32(l2[j*es+12:]), be.Uint32(l2[j*es+8:])
				if alloc&zero != 0 {
					return refuse("extended L2 entry for guest offset %d marks subclusters both allocated and zero", guest)
				}
				if alloc == 0 {
					continue
				}
				if host == 0 || host%cs != 0 {
					return refuse("data cluster offset %#x (guest offset %d) is invalid", host, guest)
				}
				// Highest allocated subcluster must be inside the file.
				last := int64(31)
				for alloc&(1<<uint(last)) == 0 {
					last--
				}
				need := min((last+1)*subcs, used)
				if host >= fileSize || need > fileSize-host {
					return refuse("data cluster at %#x (guest offset %d) lies past the end of the file (%d bytes): the image is truncated or corrupt", host, guest, fileSize)
				}
				info.AllocatedClusters++
				continue
			}
			if e&l2Reserved != 0 {
				return refuse("L2 entry for guest offset %d has reserved bits set (%#x)", guest, e)
			}
			if host == 0 {
				continue // unallocated, or a zero cluster without a host cluster
			}
			if host%cs != 0 {
				return refuse("data cluster offset %#x (guest offset %d) is not cluster aligned", host, guest)
			}
			if e&l2ZeroFlag != 0 {
				continue // preallocated zero cluster: reads as zeros, never read
			}
			if host >= fileSize || used > fileSize-host {
				return refuse("data cluster at %#x (guest offset %d) lies past the end of the file (%d bytes): the image is truncated or corrupt", host, guest, fileSize)
			}
			info.AllocatedClusters++
		}
	}
	return nil
}

// readFullAt reads len(p) bytes at off: a short read is an error even when the
// reader says io.EOF with it.
func readFullAt(r io.ReaderAt, p []byte, off int64) error {
	n, err := r.ReadAt(p, off)
	if n == len(p) {
		return nil
	}
	if err == nil || errors.Is(err, io.EOF) {
		err = io.ErrUnexpectedEOF
	}
	return err
}
