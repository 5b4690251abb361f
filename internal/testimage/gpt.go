// Package testimage builds small disk images in memory: GPT disks with
// partitions filled with a mix of data, for `byoi demo` and for tests. The
// GPT layout follows the UEFI specification 2.10, section 5.3.
package testimage

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"math/rand/v2"
	"strings"
	"unicode/utf16"
)

// Well-known GPT partition type GUIDs.
const (
	TypeESP       = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
	TypeLinux     = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
	TypeBIOSBoot  = "21686148-6449-6E6F-744E-656564454649"
	entryCount    = 128
	entrySize     = 128
	gptHeaderSize = 92
)

// Part is one partition of a built image. Start and Size are in bytes and
// must be sector multiples. Fill decides the content.
type Part struct {
	Name  string
	Type  string // GUID text
	Start int64
	Size  int64
	Fill  Fill
}

// Fill is how a partition is filled.
type Fill int

const (
	FillZero  Fill = iota // nothing written
	FillMixed             // random blocks, text-like blocks and zero runs
)

// GPT builds a disk image of size bytes with a protective MBR, primary and
// backup GPT and the given partitions. seed makes the content and GUIDs
// reproducible.
func GPT(size, sectorSize int64, parts []Part, seed uint64) ([]byte, error) {
	if sectorSize != 512 && sectorSize != 4096 {
		return nil, fmt.Errorf("sector size %d", sectorSize)
	}
	if size%sectorSize != 0 {
		return nil, fmt.Errorf("size %d is not a multiple of %d", size, sectorSize)
	}
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	sectors := size / sectorSize
	entrySectors := int64(entryCount*entrySize) / sectorSize
	firstUsable := 2 + entrySectors
	lastUsable := sectors - 2 - entrySectors
	if lastUsable <= firstUsable {
		return nil, fmt.Errorf("size %d too small for a GPT", size)
	}
	img := make([]byte, size)
	entries := make([]byte, entryCount*entrySize)
	for i, p := range parts {
		if p.Start%sectorSize != 0 || p.Size%sectorSize != 0 || p.Size <= 0 {
			return nil, fmt.Errorf("partition %d not sector aligned", i+1)
		}
		first, last := p.Start/sectorSize, (p.Start+p.Size)/sectorSize-1
		if first < firstUsable || last > lastUsable {
			return nil, fmt.Errorf("partition %d outside the usable area", i+1)
		}
		e := entries[i*entrySize:]
		tg, err := ParseGUID(p.Type)
		if err != nil {
			return nil, err
		}
		copy(e[0:16], tg[:])
		copy(e[16:32], randomGUID(rng))
		binary.LittleEndian.PutUint64(e[32:], uint64(first))
		binary.LittleEndian.PutUint64(e[40:], uint64(last))
		for j, c := range utf16.Encode([]rune(p.Name)) {
			if j >= 36 {
				break
			}
			binary.LittleEndian.PutUint16(e[56+2*j:], c)
		}
		if p.Fill == FillMixed {
			fillMixed(img[p.Start:p.Start+p.Size], rng)
		}
	}
	diskGUID := randomGUID(rng)
	entriesCRC := crc32.ChecksumIEEE(entries)
	header := func(my, alt, entriesLBA int64) []byte {
		h := make([]byte, gptHeaderSize)
		copy(h, "EFI PART")
		binary.LittleEndian.PutUint32(h[8:], 0x00010000)
		binary.LittleEndian.PutUint32(h[12:], gptHeaderSize)
		binary.LittleEndian.PutUint64(h[24:], uint64(my))
		binary.LittleEndian.PutUint64(h[32:], uint64(alt))
		binary.LittleEndian.PutUint64(h[40:], uint64(firstUsable))
		binary.LittleEndian.PutUint64(h[48:], uint64(lastUsable))
		copy(h[56:72], diskGUID)
		binary.LittleEndian.PutUint64(h[72:], uint64(entriesLBA))
		binary.LittleEndian.PutUint32(h[80:], entryCount)
		binary.LittleEndian.PutUint32(h[84:], entrySize)
		binary.LittleEndian.PutUint32(h[88:], entriesCRC)
		binary.LittleEndian.PutUint32(h[16:], crc32.ChecksumIEEE(h))
		return h
	}
	copy(img[sectorSize:], header(1, sectors-1, 2))
	copy(img[2*sectorSize:], entries)
	copy(img[(sectors-1-entrySectors)*sectorSize:], entries)
	copy(img[(sectors-1)*sectorSize:], header(sectors-1, 1, sectors-1-entrySectors))
	// Protective MBR (UEFI 2.10 section 5.2.3).
	pe := img[446:462]
	pe[1], pe[2], pe[3] = 0x00, 0x02, 0x00
	pe[4] = 0xEE
	pe[5], pe[6], pe[7] = 0xFF, 0xFF, 0xFF
	binary.LittleEndian.PutUint32(pe[8:], 1)
	binary.LittleEndian.PutUint32(pe[12:], uint32(min(sectors-1, 0xFFFFFFFF)))
	img[510], img[511] = 0x55, 0xAA
	return img, nil
}

// ParseGUID turns GUID text into its on-disk mixed-endian bytes.
func ParseGUID(s string) ([16]byte, error) {
	var g [16]byte
	h := strings.ReplaceAll(s, "-", "")
	if len(h) != 32 {
		return g, fmt.Errorf("bad GUID %q", s)
	}
	var raw [16]byte
	for i := range raw {
		var b byte
		if _, err := fmt.Sscanf(h[2*i:2*i+2], "%02x", &b); err != nil {
			return g, fmt.Errorf("bad GUID %q: %w", s, err)
		}
		raw[i] = b
	}
	g = raw
	g[0], g[1], g[2], g[3] = raw[3], raw[2], raw[1], raw[0]
	g[4], g[5] = raw[5], raw[4]
	g[6], g[7] = raw[7], raw[6]
	return g, nil
}

func randomGUID(rng *rand.Rand) []byte {
	g := make([]byte, 16)
	for i := range g {
		g[i] = byte(rng.UintN(256))
	}
	g[7] = g[7]&0x0f | 0x40 // version 4 (byte 7 is the high byte of the LE field)
	g[8] = g[8]&0x3f | 0x80
	return g
}

// fillMixed fills b with 64 KiB blocks that are random, text-like or zero,
// roughly a third each, like a real filesystem.
func fillMixed(b []byte, rng *rand.Rand) {
	const blk = 64 << 10
	words := []string{"byoi ", "disk ", "image ", "cloud ", "init ", "kernel ", "\n"}
	for off := 0; off < len(b); off += blk {
		end := min(off+blk, len(b))
		switch rng.UintN(3) {
		case 0:
			for i := off; i < end; i += 8 {
				v := rng.Uint64()
				for j := 0; j < 8 && i+j < end; j++ {
					b[i+j] = byte(v >> (8 * j))
				}
			}
		case 1:
			i := off
			for i < end {
				i += copy(b[i:end], words[rng.UintN(uint(len(words)))])
			}
		}
	}
}
