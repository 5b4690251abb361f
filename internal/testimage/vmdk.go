package testimage

import (
	"bytes"
	"compress/zlib"
	"encoding/binary"
	"fmt"
	"slices"
)

// VMDK builds stream-optimized VMDK files the way VMware writes them
// (VMware "Virtual Disk Format 5.0", section "Stream-Optimized Compressed
// Sparse Extents"): a header whose gdOffset is GD_AT_END, the embedded
// descriptor, the grains with their markers, each grain table after its
// grains behind a GT marker, the grain directory behind a GD marker, the
// footer (the header again with the real gdOffset) behind a footer
// marker, and an end-of-stream marker. qemu-img does not write this layout
// (its tables come first and it has no footer), and reads it: it is the
// judge of this builder. It builds the whole file in memory, for tests.
type VMDK struct {
	// Raw is the virtual disk; its size must be a multiple of 512.
	Raw []byte
	// Name is the file name the descriptor's extent line names.
	Name string
	// GrainSectors is the grain size in sectors (default 128: 64 KiB).
	GrainSectors int64
	// Descriptor replaces the generated descriptor text when set.
	Descriptor string
	// Reverse writes the grains from the last to the first (the format
	// allows any order).
	Reverse bool
	// NoFooter writes a qemu-like stream: gdOffset in the header points
	// at the grain directory written after the grains, no footer.
	NoFooter bool
	// GrainHook, when set, may change each grain marker's bytes (LBA,
	// size, data) before they are written, e.g. for hostile tests.
	GrainHook func(lba uint64, marker []byte) []byte
	// Overhead is where the grains start, in sectors (default 128, as
	// VMware writes; the smallest possible keeps fuzz seeds small).
	Overhead int64
}

// VMDK layout constants (see imaging/vmdk.go for the citations).
const (
	vmdkSector    = 512
	vmdkGDAtEnd   = 0xFFFFFFFFFFFFFFFF
	vmdkGTEs      = 512
	vmdkMarkerEOS = 0
	vmdkMarkerGT  = 1
	vmdkMarkerGD  = 2
	vmdkMarkerFtr = 3
)

// Descriptor returns the descriptor VMware writes for a stream-optimized
// or monolithicSparse disk of capacity sectors in file name.
func Descriptor(createType, name string, capacity int64) string {
	return fmt.Sprintf(`# Disk DescriptorFile
version=1
encoding="UTF-8"
CID=12345678
parentCID=ffffffff
isNativeSnapshot="no"
createType=%q

# Extent description
RW %d SPARSE %q

# The Disk Data Base
#DDB

ddb.adapterType = "lsilogic"
ddb.geometry.cylinders = "1024"
ddb.geometry.heads = "255"
ddb.geometry.sectors = "63"
ddb.longContentID = "0123456789abcdef0123456789abcdef"
ddb.uuid = "60 00 C2 9a 8d 4b 2e 0f-7a 1d 0d 5a 2a 5d 00 01"
ddb.virtualHWVersion = "14"
`, createType, capacity, name)
}

// VMDKHeader builds a 512-byte SparseExtentHeader.
func VMDKHeader(version, flags uint32, capacity, grain, descOff, descSize, gdOff, overHead uint64, compress uint16) []byte {
	h := make([]byte, vmdkSector)
	le := binary.LittleEndian
	copy(h, "KDMV")
	le.PutUint32(h[4:], version)
	le.PutUint32(h[8:], flags)
	le.PutUint64(h[12:], capacity)
	le.PutUint64(h[20:], grain)
	le.PutUint64(h[28:], descOff)
	le.PutUint64(h[36:], descSize)
	le.PutUint32(h[44:], vmdkGTEs)
	le.PutUint64(h[56:], gdOff)
	le.PutUint64(h[64:], overHead)
	h[73], h[74], h[75], h[76] = '\n', ' ', '\r', '\n'
	le.PutUint16(h[77:], compress)
	return h
}

// MetaMarker builds a metadata marker sector.
func MetaMarker(sectors uint64, typ uint32) []byte {
	m := make([]byte, vmdkSector)
	binary.LittleEndian.PutUint64(m, sectors)
	binary.LittleEndian.PutUint32(m[12:], typ)
	return m
}

// GrainMarker builds a grain marker with its data, padded to a sector.
func GrainMarker(lba uint64, data []byte) []byte {
	m := make([]byte, 12+len(data))
	binary.LittleEndian.PutUint64(m, lba)
	binary.LittleEndian.PutUint32(m[8:], uint32(len(data)))
	copy(m[12:], data)
	return padSector(m)
}

// Zlib compresses b as a zlib stream.
func Zlib(b []byte) []byte {
	var buf bytes.Buffer
	zw := zlib.NewWriter(&buf)
	zw.Write(b)
	zw.Close()
	return buf.Bytes()
}

func padSector(b []byte) []byte {
	if r := len(b) % vmdkSector; r != 0 {
		b = append(b, make([]byte, vmdkSector-r)...)
	}
	return b
}

// vmdkLayout is what both sparse writers derive from a VMDK's fields.
type vmdkLayout struct {
	gs, capacity, grains, nGT, gdSectors int64
	desc                                 []byte // the descriptor, padded to a sector
	descSectors                          int64
}

func (v VMDK) layout(createType string) (vmdkLayout, error) {
	if len(v.Raw)%vmdkSector != 0 || len(v.Raw) == 0 {
		return vmdkLayout{}, fmt.Errorf("disk size %d is not a positive multiple of 512", len(v.Raw))
	}
	l := vmdkLayout{gs: v.GrainSectors, capacity: int64(len(v.Raw)) / vmdkSector}
	if l.gs == 0 {
		l.gs = 128
	}
	name := v.Name
	if name == "" {
		name = "disk.vmdk"
	}
	l.grains = (l.capacity + l.gs - 1) / l.gs
	l.nGT = (l.grains + vmdkGTEs - 1) / vmdkGTEs
	l.gdSectors = (l.nGT*4 + vmdkSector - 1) / vmdkSector
	desc := v.Descriptor
	if desc == "" {
		desc = Descriptor(createType, name, l.capacity)
	}
	l.desc = padSector([]byte(desc))
	l.descSectors = int64(len(l.desc)) / vmdkSector
	return l, nil
}

// StreamOptimized builds the VMDK file.
func (v VMDK) StreamOptimized() ([]byte, error) {
	l, err := v.layout("streamOptimized")
	if err != nil {
		return nil, err
	}
	gs, capacity, grains, nGT, gdSectors := l.gs, l.capacity, l.grains, l.nGT, l.gdSectors
	descBytes, descSectors := l.desc, l.descSectors
	overHead := max(v.Overhead, 1+descSectors)
	if v.Overhead == 0 {
		overHead = max(128, 1+descSectors)
	}
	const flags = 1 | 1<<16 | 1<<17 // NL detect, compressed, markers
	gdHeader := uint64(vmdkGDAtEnd)
	if v.NoFooter {
		gdHeader = 0 // set once known
	}
	out := VMDKHeader(3, flags, uint64(capacity), uint64(gs), 1, uint64(descSectors), gdHeader, uint64(overHead), 1)
	out = append(out, descBytes...)
	out = append(out, make([]byte, overHead*vmdkSector-int64(len(out)))...)

	gte := make([]uint32, nGT*vmdkGTEs)
	order := make([]int64, grains)
	for i := range order {
		order[i] = int64(i)
	}
	if v.Reverse {
		slices.Reverse(order)
	}
	gdEntries := make([]uint32, nGT)
	writeGT := func(t int64) {
		out = append(out, MetaMarker(vmdkGTEs*4/vmdkSector, vmdkMarkerGT)...)
		gdEntries[t] = uint32(len(out) / vmdkSector)
		for j := int64(0); j < vmdkGTEs; j++ {
			out = binary.LittleEndian.AppendUint32(out, gte[t*vmdkGTEs+j])
		}
	}
	grainBytes := gs * vmdkSector
	pendingGT := map[int64]int{} // grains written per table, to write each table after its last grain
	need := map[int64]int{}
	for _, g := range order {
		if !isZero(v.grain(g, grainBytes)) {
			need[g/vmdkGTEs]++
		}
	}
	for _, g := range order {
		data := v.grain(g, grainBytes)
		if isZero(data) {
			continue
		}
		lba := uint64(g * gs)
		gte[g] = uint32(len(out) / vmdkSector)
		m := GrainMarker(lba, Zlib(data))
		if v.GrainHook != nil {
			m = padSector(v.GrainHook(lba, m))
		}
		out = append(out, m...)
		t := g / vmdkGTEs
		if pendingGT[t]++; pendingGT[t] == need[t] {
			writeGT(t)
		}
	}
	out = append(out, MetaMarker(uint64(gdSectors), vmdkMarkerGD)...)
	gdOff := uint64(len(out) / vmdkSector)
	gd := make([]byte, gdSectors*vmdkSector)
	for i, e := range gdEntries {
		binary.LittleEndian.PutUint32(gd[4*i:], e)
	}
	out = append(out, gd...)
	if v.NoFooter {
		binary.LittleEndian.PutUint64(out[56:], gdOff)
		return append(out, MetaMarker(0, vmdkMarkerEOS)...), nil
	}
	out = append(out, MetaMarker(1, vmdkMarkerFtr)...)
	out = append(out, VMDKHeader(3, flags, uint64(capacity), uint64(gs), 1, uint64(descSectors), gdOff, uint64(overHead), 1)...)
	out = append(out, MetaMarker(0, vmdkMarkerEOS)...)
	return out, nil
}

// grain returns grain g of the disk, zero-padded to a whole grain.
func (v VMDK) grain(g, grainBytes int64) []byte {
	s := g * grainBytes
	e := min(s+grainBytes, int64(len(v.Raw)))
	if e-s == grainBytes {
		return v.Raw[s:e]
	}
	b := make([]byte, grainBytes)
	copy(b, v.Raw[s:e])
	return b
}

// MonolithicSparse builds a hosted sparse VMDK as qemu-img and VMware
// write it: header, embedded descriptor, redundant grain directory and
// tables, grain directory and tables, then the allocated grains
// (uncompressed, in disk order, grains of zeros left out).
func (v VMDK) MonolithicSparse() ([]byte, error) {
	l, err := v.layout("monolithicSparse")
	if err != nil {
		return nil, err
	}
	gs, capacity, grains, nGT, gdSectors := l.gs, l.capacity, l.grains, l.nGT, l.gdSectors
	descBytes, descSectors := l.desc, l.descSectors
	gtSectors := int64(vmdkGTEs * 4 / vmdkSector)
	rgd := 1 + descSectors
	gd := rgd + gdSectors + nGT*gtSectors
	overHead := gd + gdSectors + nGT*gtSectors
	if v.Overhead == 0 {
		overHead = (overHead + gs - 1) / gs * gs
	}
	overHead = max(overHead, v.Overhead)
	const flags = 1 | 2 // NL detect, redundant grain table
	out := VMDKHeader(1, flags, uint64(capacity), uint64(gs), 1, uint64(descSectors), uint64(gd), uint64(overHead), 0)
	binary.LittleEndian.PutUint64(out[48:], uint64(rgd))
	out = append(out, descBytes...)
	out = append(out, make([]byte, overHead*vmdkSector-int64(len(out)))...)
	next := overHead
	grainBytes := gs * vmdkSector
	for g := int64(0); g < grains; g++ {
		data := v.grain(g, grainBytes)
		if isZero(data) {
			continue
		}
		for _, dir := range []int64{rgd, gd} {
			gt := dir + gdSectors + (g/vmdkGTEs)*gtSectors
			binary.LittleEndian.PutUint32(out[gt*vmdkSector+4*(g%vmdkGTEs):], uint32(next))
		}
		out = append(out, data...)
		next += gs
	}
	for t := int64(0); t < nGT; t++ {
		for _, dir := range []int64{rgd, gd} {
			binary.LittleEndian.PutUint32(out[dir*vmdkSector+4*t:], uint32(dir+gdSectors+t*gtSectors))
		}
	}
	return out, nil
}
