package testimage

import (
	"bytes"
	"compress/flate"
	"encoding/binary"
	"fmt"
)

// Qcow2 encodes a raw disk image as a qcow2 v3 image with zlib-compressed
// clusters (the layout of qemu's docs/interop/qcow2.txt): all-zero clusters
// stay unallocated, a cluster that does not compress is stored as is, and
// refcounts and the COPIED flags are exact, so `qemu-img check` finds
// nothing to fix. It is for the demo and tests, not for large images: it
// builds the whole file in memory.
func Qcow2(raw []byte, clusterBits uint) ([]byte, error) {
	return Qcow2Layout(raw, clusterBits, TablesFirst)
}

// Qcow2LayoutKind is where Qcow2Layout puts the L1 and L2 tables.
type Qcow2LayoutKind int

const (
	// TablesFirst: header, refcount table and blocks, L1, L2 tables,
	// then the data clusters (the streamable layout of qemu-img convert
	// and most builders).
	TablesFirst Qcow2LayoutKind = iota
	// TablesLast: the data clusters before the L1 and L2 tables (an
	// image whose tables were moved, e.g. by a resize): a streaming
	// reader meets data before the tables that map it.
	TablesLast
)

// Qcow2Layout is Qcow2 with the tables placed as layout says.
func Qcow2Layout(raw []byte, clusterBits uint, layout Qcow2LayoutKind) ([]byte, error) {
	if clusterBits < 9 || clusterBits > 21 {
		return nil, fmt.Errorf("cluster bits %d outside 9..21", clusterBits)
	}
	cs := int64(1) << clusterBits
	size := int64(len(raw))
	guestClusters := (size + cs - 1) / cs
	l2Entries := cs / 8
	l1Size := (guestClusters + l2Entries - 1) / l2Entries
	if l1Size == 0 {
		l1Size = 1
	}

	// Data area, with offsets relative to its start, then fixed up.
	type entry struct {
		off, n     int64 // in the data area
		compressed bool
	}
	entries := make([]entry, guestClusters)
	var data bytes.Buffer
	var zbuf bytes.Buffer
	zw, err := flate.NewWriter(&zbuf, flate.DefaultCompression)
	if err != nil {
		return nil, err
	}
	cluster := make([]byte, cs)
	for i := range guestClusters {
		clear(cluster)
		copy(cluster, raw[i*cs:min((i+1)*cs, size)])
		if isZero(cluster) {
			continue
		}
		zbuf.Reset()
		zw.Reset(&zbuf)
		zw.Write(cluster)
		if err := zw.Close(); err != nil {
			return nil, err
		}
		if int64(zbuf.Len()) < cs {
			entries[i] = entry{off: int64(data.Len()), n: int64(zbuf.Len()), compressed: true}
			data.Write(zbuf.Bytes())
			continue
		}
		if pad := int64(data.Len()) % cs; pad != 0 {
			data.Write(make([]byte, cs-pad))
		}
		entries[i] = entry{off: int64(data.Len()), n: cs}
		data.Write(cluster)
	}
	if pad := int64(data.Len()) % cs; pad != 0 {
		data.Write(make([]byte, cs-pad))
	}
	dataClusters := int64(data.Len()) / cs

	// Which L2 tables are needed.
	l2Used := make([]bool, l1Size)
	for i, e := range entries {
		if e.n > 0 {
			l2Used[int64(i)/l2Entries] = true
		}
	}
	var nL2 int64
	for _, u := range l2Used {
		if u {
			nL2++
		}
	}
	l1Clusters := (l1Size*8 + cs - 1) / cs
	// Refcount table and blocks (16-bit refcounts) must cover every host
	// cluster, themselves included: grow until it fits.
	perBlock := cs / 2
	rtClusters, rbCount := int64(1), int64(1)
	var total int64
	for {
		total = 1 + rtClusters + rbCount + l1Clusters + nL2 + dataClusters
		needBlocks := (total + perBlock - 1) / perBlock
		needRT := (needBlocks*8 + cs - 1) / cs
		if needBlocks <= rbCount && needRT <= rtClusters {
			break
		}
		rbCount, rtClusters = max(rbCount, needBlocks), max(rtClusters, needRT)
	}
	rtOff := cs
	rbOff := rtOff + rtClusters*cs
	l1Off := rbOff + rbCount*cs
	l2Off := l1Off + l1Clusters*cs
	dataOff := l2Off + nL2*cs
	if layout == TablesLast {
		dataOff = rbOff + rbCount*cs
		l1Off = dataOff + dataClusters*cs
		l2Off = l1Off + l1Clusters*cs
	}

	out := make([]byte, total*cs)
	be := binary.BigEndian
	copy(out, "QFI\xfb")
	be.PutUint32(out[4:], 3)
	be.PutUint32(out[20:], uint32(clusterBits))
	be.PutUint64(out[24:], uint64(size))
	be.PutUint32(out[36:], uint32(l1Size))
	be.PutUint64(out[40:], uint64(l1Off))
	be.PutUint64(out[48:], uint64(rtOff))
	be.PutUint32(out[56:], uint32(rtClusters))
	be.PutUint32(out[96:], 4) // refcount_order: 16-bit refcounts
	be.PutUint32(out[100:], 104)
	// Header extensions end at 104 with an all-zero end marker.

	refs := make([]uint16, total)
	for c := int64(0); c < total; c++ {
		if off := c * cs; off < rbOff+rbCount*cs || (off >= l1Off && off < l2Off+nL2*cs) {
			refs[c] = 1 // header, refcount structures, L1, L2
		}
	}
	const copied = uint64(1) << 63
	x := 62 - (clusterBits - 8)
	nextL2 := l2Off
	for l1i := range l1Size {
		if !l2Used[l1i] {
			continue
		}
		be.PutUint64(out[l1Off+l1i*8:], uint64(nextL2)|copied)
		for j := range l2Entries {
			g := l1i*l2Entries + j
			if g >= guestClusters || entries[g].n == 0 {
				continue
			}
			e := entries[g]
			host := dataOff + e.off
			var desc uint64
			if e.compressed {
				sectors := (host+e.n-1)>>9 - host>>9
				desc = 1<<62 | uint64(sectors)<<x | uint64(host)
				for c := host / cs; c <= (host+e.n-1)/cs; c++ {
					refs[c]++
				}
			} else {
				desc = uint64(host) | copied
				refs[host/cs]++
			}
			be.PutUint64(out[nextL2+j*8:], desc)
		}
		nextL2 += cs
	}
	copy(out[dataOff:], data.Bytes())
	for b := range rbCount {
		be.PutUint64(out[rtOff+b*8:], uint64(rbOff+b*cs))
	}
	for c, r := range refs {
		be.PutUint16(out[rbOff+int64(c)*2:], r)
	}
	return out, nil
}

func isZero(b []byte) bool {
	for len(b) >= 8 {
		if binary.LittleEndian.Uint64(b) != 0 {
			return false
		}
		b = b[8:]
	}
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
