// Package crashcheck judges a disk after a deployment was killed at some
// point: it must show nothing at all, or one system whole (the old one, or
// the complete new one), never a partition table over a mixture. Tests of
// the agent (a fault-injecting target) and of the binary (a real kill -9)
// share it.
package crashcheck

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/byoi/byoi/internal/testimage"

	"github.com/byoi/byoi/blockdev"
	"github.com/byoi/byoi/configdrive"
	"github.com/byoi/byoi/internal/testutil"
	"github.com/byoi/byoi/partition"
)

// System is a disk a crashed one may show: its path and its table.
type System struct {
	Name   string
	Path   string
	Table  *partition.Table
	UUID   string // the ConfigDrive's uuid, when it has one
	Format configdrive.Format
}

// Check decides the state of a crashed disk: "nothing" (no table
// anywhere), or one of systems: a readable table (from its primary or its
// backup GPT) whose every partition is that system's, byte for byte.
// Anything else fails the test. peers also asks sfdisk, blkid and sgdisk
// about a "nothing" disk.
func Check(t *testing.T, path string, systems []System, ss int64, peers bool) string {
	t.Helper()
	gpts := ScanGPT(t, path)
	mbr := make([]byte, 512)
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.ReadAt(mbr, 0); err != nil {
		t.Fatal(err)
	}
	hasMBR := mbr[510] == 0x55 && mbr[511] == 0xAA
	if len(gpts) == 0 && !hasMBR {
		if peers {
			testutil.AssertNoTable(t, path)
			// sgdisk -v on a disk without a GPT says it creates new
			// entries in memory; one it can recover says so.
			if out, _, _ := testutil.RunErr("sgdisk", "-v", path); !strings.Contains(out, "Creating new GPT entries") || strings.Contains(out, "valid backup") {
				t.Errorf("sgdisk finds a GPT to recover:\n%s", out)
			}
		}
		return "nothing"
	}
	// Something is visible: it must be one system, whole. Every copy of a
	// table found is checked: the primary, and the backup as sgdisk's
	// recovery would read it.
	d, err := blockdev.Open(path, blockdev.OpenOptions{SectorSize: ss})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	tab, err := partition.Read(d)
	if err != nil {
		// Not at the primary nor at the last LBA: a backup elsewhere (the
		// stale one of a disk that grew), as a GPT scan finds it.
		for _, off := range gpts {
			if tab = readTableAt(t, path, ss, off); tab != nil {
				break
			}
		}
		if tab == nil {
			t.Errorf("a table is visible (GPT headers at %v, MBR %v) but cannot be read: %v", gpts, hasMBR, err)
			return "broken"
		}
	}
	var why []string
	for _, sys := range systems {
		if msg := sameSystem(t, f, tab, sys); msg != "" {
			why = append(why, sys.Name+": "+msg)
			continue
		}
		// Any other header on the disk (a stale backup the scan found)
		// must describe the same system too.
		for _, off := range gpts {
			if h := readTableAt(t, path, ss, off); h != nil {
				if msg := sameSystem(t, f, h, sys); msg != "" {
					t.Errorf("the GPT header at %d describes another system than the one visible (%s): %s", off, sys.Name, msg)
					return "mixture"
				}
			}
		}
		if tab.FromBackup {
			return sys.Name + " (from a backup GPT)"
		}
		return sys.Name
	}
	t.Errorf("a table is visible (GPT headers at %v) that is neither system whole: %s", gpts, strings.Join(why, "; "))
	return "mixture"
}

// sameSystem compares a table and the data under it with a system.
func sameSystem(t *testing.T, f *os.File, tab *partition.Table, sys System) string {
	if len(tab.Partitions) != len(sys.Table.Partitions) {
		return fmt.Sprintf("%d partitions, not %d", len(tab.Partitions), len(sys.Table.Partitions))
	}
	rf, err := os.Open(sys.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer rf.Close()
	for i, p := range tab.Partitions {
		r := sys.Table.Partitions[i]
		if p.Start != r.Start || p.Size != r.Size || p.Name != r.Name || p.TypeGUID != r.TypeGUID {
			return fmt.Sprintf("partition %d is %s at %d (%d bytes), not %s at %d (%d bytes)", i+1, p.Name, p.Start, p.Size, r.Name, r.Start, r.Size)
		}
		if p.Name == "config-2" && sys.UUID != "" {
			// The ISO 9660 writer stamps times: compare what cloud-init
			// reads (the drive's uuid, derived from the job and disk).
			if err := configdrive.Verify(io.NewSectionReader(f, p.Start, p.Size), p.Size, sys.Format, sys.UUID); err != nil {
				return fmt.Sprintf("partition %d (config-2) is not the ConfigDrive: %v", p.Number, err)
			}
			continue
		}
		if !sameRange(t, f, rf, p.Start, p.Size) {
			return fmt.Sprintf("partition %d (%s) holds other data", p.Number, p.Name)
		}
	}
	return ""
}

// readTableAt reads the GPT whose header is at byte off (nil if it does
// not read): a copy of the disk with only that header's sector range kept
// at its place, so partition.Read recovers from it as a backup.
func readTableAt(t *testing.T, path string, ss, off int64) *partition.Table {
	t.Helper()
	if off%ss != 0 {
		return nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	// Drop every other header so only this one can be used.
	for _, o := range ScanGPT(t, path) {
		if o != off {
			clear(b[o : o+512])
		}
	}
	if off != ss { // not the primary: the primary location is empty now; read it as a backup at the last LBA
		hdr := append([]byte(nil), b[off:off+ss]...)
		arrLBA := binary.LittleEndian.Uint64(hdr[72:])
		n := binary.LittleEndian.Uint32(hdr[80:]) * binary.LittleEndian.Uint32(hdr[84:])
		arr := append([]byte(nil), b[int64(arrLBA)*ss:int64(arrLBA)*ss+int64(n)]...)
		if int64(len(b)) != off+ss {
			// move it to the end, as the disk's last LBA, with its array just before
			end := int64(len(b)) - ss
			clear(b[off : off+ss])
			binary.LittleEndian.PutUint64(hdr[24:], uint64(end/ss))
			newArr := end - ((int64(n)+ss-1)/ss)*ss
			binary.LittleEndian.PutUint64(hdr[72:], uint64(newArr/ss))
			binary.LittleEndian.PutUint32(hdr[16:], 0)
			sz := binary.LittleEndian.Uint32(hdr[12:])
			binary.LittleEndian.PutUint32(hdr[16:], crc32.ChecksumIEEE(hdr[:sz]))
			copy(b[newArr:], arr)
			copy(b[end:], hdr)
		}
	}
	// A protective MBR, so partition.Read looks for the GPT at all.
	clear(b[:512])
	b[446+4], b[446+8], b[510], b[511] = 0xEE, 1, 0x55, 0xAA
	binary.LittleEndian.PutUint32(b[446+12:], uint32(min(int64(len(b))/512-1, 0xFFFFFFFF)))
	p := filepath.Join(t.TempDir(), "one-header.img")
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	d, err := blockdev.Open(p, blockdev.OpenOptions{SectorSize: ss})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	tab, err := partition.Read(d)
	if err != nil {
		return nil
	}
	return tab
}

func sameRange(t *testing.T, a, b *os.File, off, n int64) bool {
	t.Helper()
	bufA, bufB := make([]byte, 1<<20), make([]byte, 1<<20)
	for n > 0 {
		k := min(n, int64(len(bufA)))
		if _, err := a.ReadAt(bufA[:k], off); err != nil {
			t.Fatal(err)
		}
		if _, err := b.ReadAt(bufB[:k], off); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(bufA[:k], bufB[:k]) {
			return false
		}
		off, n = off+k, n-k
	}
	return true
}

// ScanGPT returns the offsets of every sector (512-byte aligned) holding a
// valid GPT header: the signature, a sane header size and a matching CRC32.
// It reads the whole disk: no location is trusted to be the only one.
func ScanGPT(t testing.TB, path string) []int64 {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []int64
	for off := 0; off+512 <= len(b); off += 512 {
		s := b[off : off+512]
		if string(s[:8]) != "EFI PART" {
			continue
		}
		size := binary.LittleEndian.Uint32(s[12:])
		if size < 92 || size > 512 {
			continue
		}
		h := append([]byte(nil), s[:size]...)
		want := binary.LittleEndian.Uint32(h[16:])
		binary.LittleEndian.PutUint32(h[16:], 0)
		if crc32.ChecksumIEEE(h) == want {
			out = append(out, int64(off))
		}
	}
	return out
}

// ReadTable reads the table of a finished or original disk.
func ReadTable(t *testing.T, path string, ss int64) *partition.Table {
	t.Helper()
	d, err := blockdev.Open(path, blockdev.OpenOptions{SectorSize: ss})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	tab, err := partition.Read(d)
	if err != nil {
		t.Fatal(err)
	}
	return tab
}

// OldSystem is a disk of size bytes holding a previous bootable GPT system of the
// given sector size: an ESP and a root partition at both ends of the GPT,
// and, to test every header location, a stale backup GPT in the middle
// (the disk grew without moving it: the primary names it).
func OldSystem(t testing.TB, ss, size int64) string {
	t.Helper()
	old, err := testimage.GPT(size-8*(1<<20), ss, []testimage.Part{
		{Name: "old ESP", Type: testimage.TypeESP, Start: 1 << 20, Size: 8 << 20, Fill: testimage.FillMixed},
		{Name: "old root", Type: testimage.TypeLinux, Start: 9 << 20, Size: size - 19*(1<<20), Fill: testimage.FillMixed},
	}, 77)
	if err != nil {
		t.Fatal(err)
	}
	copy(old[:440], bytes.Repeat([]byte{0xEB, 0x63, 0x90}, 100)) // boot code
	p := filepath.Join(t.TempDir(), "old.img")
	if err := os.WriteFile(p, old, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(p, size); err != nil {
		t.Fatal(err)
	}
	if gpts := ScanGPT(t, p); len(gpts) < 2 {
		t.Fatalf("the old system has %d GPT headers", len(gpts))
	}
	return p
}
