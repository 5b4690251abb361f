package imaging

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/byoi/byoi/job"
)

// Layout constants from the qcow2 specification (qemu docs/interop/qcow2.txt).
const (
	qcow2Magic          = "QFI\xfb"
	qcow2V2HeaderLen    = 72  // version 2 header: bytes 0..71
	qcow2V3HeaderLen    = 104 // version 3 header without the compression type
	qcow2MinClusterBits = 9   // qemu MIN_CLUSTER_BITS
	qcow2MaxClusterBits = 21  // qemu MAX_CLUSTER_BITS (2 MiB clusters)
	// qcow2MaxL1Bytes is qemu's QCOW_MAX_L1_SIZE (32 MiB): the L1 table is
	// read whole, so this bounds memory.
	qcow2MaxL1Bytes = 32 << 20
	// qcow2MaxRefTableBytes is qemu's QCOW_MAX_REFTABLE_SIZE (8 MiB).
	qcow2MaxRefTableBytes = 8 << 20
	// qcow2MaxSnapshots is qemu's QCOW_MAX_SNAPSHOTS.
	qcow2MaxSnapshots = 65536
	// qcow2MaxVirtualSize refuses absurd virtual sizes (64 PiB).
	qcow2MaxVirtualSize = 1 << 56

	// Incompatible feature bits (spec, "incompatible_features").
	qcow2IncDirty      = 1 << 0
	qcow2IncCorrupt    = 1 << 1
	qcow2IncExtData    = 1 << 2
	qcow2IncCompress   = 1 << 3
	qcow2IncExtendedL2 = 1 << 4
	qcow2IncKnown      = qcow2IncDirty | qcow2IncCorrupt | qcow2IncExtData | qcow2IncCompress | qcow2IncExtendedL2

	// Header extension types (spec, "Header extensions").
	qcow2ExtEnd          = 0x00000000
	qcow2ExtBackingFmt   = 0xe2792aca
	qcow2ExtFeatureNames = 0x6803f857
	qcow2ExtBitmaps      = 0x23852875
	qcow2ExtCrypto       = 0x0537be77
	qcow2ExtDataFile     = 0x44415441

	// L1/L2 entry masks (spec, "Cluster mapping").
	qcow2L1OffsetMask = 0x00fffffffffffe00
	qcow2L2OffsetMask = 0x00fffffffffffe00
	qcow2L2Compressed = 1 << 62
	qcow2L2ZeroFlag   = 1 << 0
	qcow2DescMask     = (1 << 62) - 1
	qcow2L2Reserved   = 0x3f000000000001fe // standard cluster descriptor: bits 1-8 and 56-61
)

// ErrQcow2 is matched (errors.Is) by every refusal of a qcow2 image: unsafe
// (backing file, external data file, encryption) or corrupt.
var ErrQcow2 = errors.New("qcow2 image refused")

// Qcow2Error is a qcow2 image byoi refuses to convert, with the reason.
type Qcow2Error struct {
	Reason string
	Err    error
}

func (e *Qcow2Error) Error() string {
	reason := e.Reason
	if e.Err != nil {
		reason += ": " + e.Err.Error()
	}
	return job.Text(job.Qcow2Refused, reason)
}

// MessageCode returns the catalog code.
func (e *Qcow2Error) MessageCode() job.Code { return job.Qcow2Refused }

// Is makes errors.Is(err, ErrQcow2) true.
func (e *Qcow2Error) Is(target error) bool { return target == ErrQcow2 }

func (e *Qcow2Error) Unwrap() error { return e.Err }

func q2Refuse(format string, args ...any) error {
	return &Qcow2Error{Reason: fmt.Sprintf(format, args...)}
}

// Qcow2Info is what the qcow2 header says about an image.
type Qcow2Info struct {
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
	// HeaderExtensions lists the extension types found (CheckQcow2 only).
	HeaderExtensions []uint32
	// AllocatedClusters counts the data clusters the L2 tables map
	// (CheckQcow2 only).
	AllocatedClusters  int64
	CompressedClusters int64

	// checked is the file size CheckQcow2 accepted this image at (0: the
	// header alone was read): ConvertQcow2 converts nothing else.
	checked int64
}

// l2EntrySize is the size of one L2 entry: 8, or 16 with extended L2.
func (i *Qcow2Info) l2EntrySize() int64 {
	if i.ExtendedL2 {
		return 16
	}
	return 8
}

// l1Needed is the number of L1 entries the virtual size needs.
func (i *Qcow2Info) l1Needed() int64 {
	perL2 := i.ClusterSize / i.l2EntrySize() * i.ClusterSize // bytes one L2 table maps
	return (i.VirtualSize + perL2 - 1) / perL2
}

// ParseQcow2Header reads the header fields from the first bytes of a qcow2
// image (at least 112 bytes for version 3, 72 for version 2). It refuses
// only what makes the header unreadable: use CheckQcow2Header or CheckQcow2
// for the safety checks.
func ParseQcow2Header(head []byte) (*Qcow2Info, error) {
	if len(head) < 4 || string(head[:4]) != qcow2Magic {
		return nil, q2Refuse("not a qcow2 image (no QFI\\xfb magic)")
	}
	if len(head) < qcow2V2HeaderLen {
		return nil, q2Refuse("header truncated (%d bytes)", len(head))
	}
	be := binary.BigEndian
	info := &Qcow2Info{
		Version:               int(be.Uint32(head[4:])),
		ClusterBits:           be.Uint32(head[20:]),
		CryptMethod:           be.Uint32(head[32:]),
		L1Size:                be.Uint32(head[36:]),
		RefcountTableClusters: be.Uint32(head[56:]),
		NbSnapshots:           be.Uint32(head[60:]),
		HeaderLength:          qcow2V2HeaderLen,
		RefcountOrder:         4,
		Compression:           "zlib",
	}
	backingOff := be.Uint64(head[8:])
	info.HasBackingFile = backingOff != 0
	size := be.Uint64(head[24:])
	l1Off := be.Uint64(head[40:])
	refOff := be.Uint64(head[48:])
	snapOff := be.Uint64(head[64:])
	if size > qcow2MaxVirtualSize {
		return nil, q2Refuse("virtual size %d bytes is absurd", size)
	}
	for _, o := range []uint64{l1Off, refOff, snapOff} {
		if o > 1<<62 {
			return nil, q2Refuse("table offset %#x is absurd", o)
		}
	}
	info.VirtualSize = int64(size)
	info.L1Offset, info.RefcountTableOffset, info.SnapshotsOffset = int64(l1Off), int64(refOff), int64(snapOff)
	switch info.Version {
	case 2:
	case 3:
		if len(head) < qcow2V3HeaderLen {
			return nil, q2Refuse("version 3 header truncated (%d bytes)", len(head))
		}
		info.IncompatibleFeatures = be.Uint64(head[72:])
		info.CompatibleFeatures = be.Uint64(head[80:])
		info.AutoclearFeatures = be.Uint64(head[88:])
		info.RefcountOrder = be.Uint32(head[96:])
		info.HeaderLength = be.Uint32(head[100:])
		if info.HeaderLength < qcow2V3HeaderLen || info.HeaderLength%8 != 0 {
			return nil, q2Refuse("header length %d is invalid", info.HeaderLength)
		}
		if info.HeaderLength > qcow2V3HeaderLen {
			if len(head) < qcow2V3HeaderLen+1 {
				return nil, q2Refuse("header truncated before the compression type")
			}
			switch head[104] {
			case 0:
				info.Compression = "zlib"
			case 1:
				info.Compression = "zstd"
			default:
				return nil, q2Refuse("unknown compression type %d (only zlib and zstd are supported)", head[104])
			}
		}
		info.Dirty = info.IncompatibleFeatures&qcow2IncDirty != 0
		info.ExtendedL2 = info.IncompatibleFeatures&qcow2IncExtendedL2 != 0
		info.HasExternalDataFile = info.IncompatibleFeatures&qcow2IncExtData != 0
	default:
		return nil, q2Refuse("version %d is not supported (only 2 and 3)", info.Version)
	}
	if info.ClusterBits < qcow2MinClusterBits || info.ClusterBits > qcow2MaxClusterBits {
		return nil, q2Refuse("cluster_bits %d is outside %d..%d", info.ClusterBits, qcow2MinClusterBits, qcow2MaxClusterBits)
	}
	info.ClusterSize = 1 << info.ClusterBits
	return info, nil
}

// CheckQcow2Header parses head like ParseQcow2Header and applies every check
// that needs only the header: no backing file, no external data file, no
// encryption, only known incompatible features, a sane virtual size that fits
// the target (targetSize 0 skips that check) and a sane L1 table size. The
// pipeline may call it on the first bytes of a stream to refuse early.
func CheckQcow2Header(head []byte, targetName string, targetSize int64) (*Qcow2Info, error) {
	info, err := ParseQcow2Header(head)
	if err != nil {
		return nil, err
	}
	if info.HasBackingFile {
		// Never follow it: the name could point at any local file.
		return nil, q2Refuse("it has a backing file; only self-contained images are supported (qemu-img convert -O qcow2 flattens it)")
	}
	if info.CryptMethod != 0 {
		return nil, q2Refuse("it is encrypted (crypt_method %d)", info.CryptMethod)
	}
	inc := info.IncompatibleFeatures
	if inc&qcow2IncExtData != 0 {
		return nil, q2Refuse("it uses an external data file")
	}
	if inc&qcow2IncCorrupt != 0 {
		return nil, q2Refuse("qemu marked it corrupt (incompatible feature bit 1)")
	}
	if unknown := inc &^ qcow2IncKnown; unknown != 0 {
		return nil, q2Refuse("unknown incompatible features %#x", unknown)
	}
	if info.Compression == "zstd" && inc&qcow2IncCompress == 0 {
		return nil, q2Refuse("compression type zstd without the compression type feature bit")
	}
	if info.RefcountOrder > 6 {
		return nil, q2Refuse("refcount_order %d is invalid", info.RefcountOrder)
	}
	if int64(info.HeaderLength) > info.ClusterSize {
		return nil, q2Refuse("header length %d is larger than a cluster", info.HeaderLength)
	}
	if info.VirtualSize <= 0 {
		return nil, q2Refuse("virtual size is 0")
	}
	if targetSize > 0 && info.VirtualSize > targetSize {
		return nil, &SizeError{ImageSize: info.VirtualSize, TargetName: targetName, TargetSize: targetSize}
	}
	needed := info.l1Needed()
	if int64(info.L1Size)*8 > qcow2MaxL1Bytes {
		return nil, q2Refuse("L1 table of %d entries is too large", info.L1Size)
	}
	if int64(info.L1Size) < needed {
		return nil, q2Refuse("L1 table of %d entries is too small for the virtual size (needs %d)", info.L1Size, needed)
	}
	// A larger L1 table than the virtual size needs is legitimate:
	// `qemu-img resize --shrink` keeps it. Its extra entries are never
	// used (nor read by CheckQcow2); it is bounded by qemu's limit above
	// and must lie inside the file (CheckQcow2).
	if info.L1Offset == 0 || info.L1Offset%info.ClusterSize != 0 {
		return nil, q2Refuse("L1 table offset %#x is not cluster aligned", info.L1Offset)
	}
	if info.RefcountTableOffset == 0 || info.RefcountTableOffset%info.ClusterSize != 0 {
		return nil, q2Refuse("refcount table offset %#x is not cluster aligned", info.RefcountTableOffset)
	}
	if info.RefcountTableClusters == 0 || int64(info.RefcountTableClusters)*info.ClusterSize > qcow2MaxRefTableBytes {
		return nil, q2Refuse("refcount table of %d clusters is invalid", info.RefcountTableClusters)
	}
	if info.NbSnapshots > qcow2MaxSnapshots {
		return nil, q2Refuse("%d snapshots is too many", info.NbSnapshots)
	}
	if info.NbSnapshots > 0 && (info.SnapshotsOffset == 0 || info.SnapshotsOffset%info.ClusterSize != 0) {
		return nil, q2Refuse("snapshot table offset %#x is not cluster aligned", info.SnapshotsOffset)
	}
	return info, nil
}

// CheckQcow2 validates an untrusted qcow2 image before go-qcow2reader opens
// anything: the header (CheckQcow2Header), the header extensions, that every
// table lies inside the file (fileSize is the staged size), and every L1 and
// L2 entry: tables and data clusters aligned and inside the file. It reads
// the first cluster, the L1 table and each L2 table once, one at a time, so
// memory stays below a few MiB. targetSize 0 skips the size check.
func CheckQcow2(r io.ReaderAt, fileSize int64, targetName string, targetSize int64) (*Qcow2Info, error) {
	if fileSize < qcow2V2HeaderLen {
		return nil, q2Refuse("file of %d bytes is too short for a qcow2 header", fileSize)
	}
	head := make([]byte, min(fileSize, 4096))
	if _, err := r.ReadAt(head, 0); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("read qcow2 header: %w", err)
	}
	info, err := CheckQcow2Header(head, targetName, targetSize)
	if err != nil {
		return nil, err
	}
	cs := info.ClusterSize
	if fileSize < cs && fileSize < int64(info.HeaderLength) {
		return nil, q2Refuse("file of %d bytes is truncated", fileSize)
	}
	// Header extensions live in the rest of the first cluster.
	first := make([]byte, min(cs, fileSize))
	if _, err := r.ReadAt(first, 0); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("read qcow2 header: %w", err)
	}
	if err := q2CheckExtensions(info, first); err != nil {
		return nil, err
	}
	within := func(what string, off, n int64) error {
		if off < 0 || n < 0 || off > fileSize || n > fileSize-off {
			return q2Refuse("%s at %#x (%d bytes) lies past the end of the file (%d bytes): the image is truncated or corrupt", what, off, n, fileSize)
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
	if err := q2CheckTables(r, fileSize, info); err != nil {
		return nil, err
	}
	info.checked = fileSize
	return info, nil
}

// q2CheckExtensions walks the header extensions (spec: after the header, in
// the first cluster, each 8-byte aligned) and refuses an external data file
// or an encryption header.
func q2CheckExtensions(info *Qcow2Info, first []byte) error {
	be := binary.BigEndian
	off := int(info.HeaderLength)
	for {
		if off+8 > len(first) {
			// qemu stops at the end of the cluster too, but an image whose
			// extension area is cut by the end of the file is truncated.
			if len(first) < int(info.ClusterSize) {
				return q2Refuse("header extensions run past the end of the file")
			}
			return nil
		}
		typ, n := be.Uint32(first[off:]), int(be.Uint32(first[off+4:]))
		if typ == qcow2ExtEnd {
			return nil
		}
		if len(info.HeaderExtensions) >= 1024 {
			return q2Refuse("too many header extensions")
		}
		info.HeaderExtensions = append(info.HeaderExtensions, typ)
		switch typ {
		case qcow2ExtDataFile:
			info.HasExternalDataFile = true
			return q2Refuse("it names an external data file")
		case qcow2ExtCrypto:
			return q2Refuse("it has a full disk encryption header")
		}
		next := off + 8 + (n+7)/8*8
		if n < 0 || next > len(first) {
			return q2Refuse("header extension %#x of %d bytes runs past the first cluster", typ, n)
		}
		off = next
	}
}

// q2CheckTables reads the L1 table and every L2 table it points to and checks
// each entry: L2 tables and data clusters aligned and inside the file,
// compressed clusters inside the file (their last sector may end up to 511
// bytes past it: qemu does not pad the file).
func q2CheckTables(r io.ReaderAt, fileSize int64, info *Qcow2Info) error {
	be := binary.BigEndian
	cs := info.ClusterSize
	l1 := make([]byte, int64(info.L1Size)*8)
	if err := q2ReadFull(r, l1, info.L1Offset); err != nil {
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
		l2Off := int64(be.Uint64(l1[i*8:]) & qcow2L1OffsetMask)
		if l2Off == 0 {
			continue
		}
		if l2Off%cs != 0 {
			return q2Refuse("L2 table offset %#x (L1 entry %d) is not cluster aligned", l2Off, i)
		}
		if l2Off >= fileSize || cs > fileSize-l2Off {
			return q2Refuse("L2 table at %#x (L1 entry %d) lies past the end of the file (%d bytes): the image is truncated or corrupt", l2Off, i, fileSize)
		}
		if k := l2Off / cs; seen[k/64]&(1<<(k%64)) != 0 {
			return q2Refuse("L2 table at %#x is used twice by the L1 table", l2Off)
		} else {
			seen[k/64] |= 1 << (k % 64)
		}
		if err := q2ReadFull(r, l2, l2Off); err != nil {
			return fmt.Errorf("read qcow2 L2 table at %#x: %w", l2Off, err)
		}
		for j := int64(0); j < entries; j++ {
			guest := (i*entries + j) * cs
			if guest >= info.VirtualSize {
				break
			}
			used := min(cs, info.VirtualSize-guest)
			e := be.Uint64(l2[j*es:])
			if e&qcow2L2Compressed != 0 {
				desc := e & qcow2DescMask
				host := int64(desc & (1<<x - 1))
				sectors := int64(desc>>x) + 1
				end := host&^511 + sectors*512
				if host == 0 || host >= fileSize || end-fileSize >= 512 {
					return q2Refuse("compressed cluster at %#x (%d bytes, guest offset %d) lies past the end of the file (%d bytes): the image is truncated or corrupt", host, end-host, guest, fileSize)
				}
				info.CompressedClusters++
				info.AllocatedClusters++
				continue
			}
			host := int64(e & qcow2L2OffsetMask)
			if info.ExtendedL2 {
				alloc, zero := be.Uint32(l2[j*es+12:]), be.Uint32(l2[j*es+8:])
				if alloc&zero != 0 {
					return q2Refuse("extended L2 entry for guest offset %d marks subclusters both allocated and zero", guest)
				}
				if alloc == 0 {
					continue
				}
				if host == 0 || host%cs != 0 {
					return q2Refuse("data cluster offset %#x (guest offset %d) is invalid", host, guest)
				}
				// Highest allocated subcluster must be inside the file.
				last := int64(31)
				for alloc&(1<<uint(last)) == 0 {
					last--
				}
				need := min((last+1)*subcs, used)
				if host >= fileSize || need > fileSize-host {
					return q2Refuse("data cluster at %#x (guest offset %d) lies past the end of the file (%d bytes): the image is truncated or corrupt", host, guest, fileSize)
				}
				info.AllocatedClusters++
				continue
			}
			if e&qcow2L2Reserved != 0 {
				return q2Refuse("L2 entry for guest offset %d has reserved bits set (%#x)", guest, e)
			}
			if host == 0 {
				continue // unallocated, or a zero cluster without a host cluster
			}
			if host%cs != 0 {
				return q2Refuse("data cluster offset %#x (guest offset %d) is not cluster aligned", host, guest)
			}
			if e&qcow2L2ZeroFlag != 0 {
				continue // preallocated zero cluster: reads as zeros, never read
			}
			if host >= fileSize || used > fileSize-host {
				return q2Refuse("data cluster at %#x (guest offset %d) lies past the end of the file (%d bytes): the image is truncated or corrupt", host, guest, fileSize)
			}
			info.AllocatedClusters++
		}
	}
	return nil
}

// q2ReadFull reads len(p) bytes at off: a short read is an error even when the
// reader says io.EOF with it.
func q2ReadFull(r io.ReaderAt, p []byte, off int64) error {
	n, err := r.ReadAt(p, off)
	if n == len(p) {
		return nil
	}
	if err == nil || errors.Is(err, io.EOF) {
		err = io.ErrUnexpectedEOF
	}
	return err
}
