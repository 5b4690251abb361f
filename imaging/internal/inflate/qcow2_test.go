package inflate

import (
	"bytes"
	"encoding/binary"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// TestQemuClusters decodes every compressed cluster of zlib qcow2 images
// made by qemu-img convert -c (64 KiB and 2 MiB clusters) and checks each
// against the raw data and against compress/flate.
func TestQemuClusters(t *testing.T) {
	qemu, err := exec.LookPath("qemu-img")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("qemu-img is required in CI: %v", err)
		}
		t.Skipf("qemu-img not found: %v", err)
	}
	dir := t.TempDir()
	raw := benchData(12 << 20)
	clear(raw[4<<20 : 5<<20]) // zero clusters stay unallocated
	rawPath := filepath.Join(dir, "raw.img")
	if err := os.WriteFile(rawPath, raw, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, cs := range []string{"64k", "2M"} {
		t.Run(cs, func(t *testing.T) {
			img := filepath.Join(dir, cs+".qcow2")
			out, err := exec.Command(qemu, "convert", "-c", "-f", "raw", "-O", "qcow2", "-o", "cluster_size="+cs+",compression_type=zlib", rawPath, img).CombinedOutput()
			if err != nil {
				t.Fatalf("qemu-img convert: %v: %s", err, out)
			}
			file, err := os.ReadFile(img)
			if err != nil {
				t.Fatal(err)
			}
			n := qcow2Clusters(t, file, raw)
			if n < 4 {
				t.Fatalf("only %d compressed clusters", n)
			}
			t.Logf("%d compressed clusters decoded", n)
		})
	}
}

// qcow2Clusters walks the L1/L2 tables of a qcow2 image and checks the
// compressed clusters; it returns how many there were.
func qcow2Clusters(t *testing.T, f, raw []byte) int {
	be := binary.BigEndian
	if len(f) < 72 || string(f[:4]) != "QFI\xfb" {
		t.Fatal("not a qcow2 image")
	}
	bits := be.Uint32(f[20:])
	if bits < 9 || bits > 21 {
		t.Fatalf("cluster bits %d", bits)
	}
	cs := 1 << bits
	l1n := int(be.Uint32(f[36:]))
	l1 := int(be.Uint64(f[40:]))
	x := 62 - (bits - 8)
	count := 0
	dst := make([]byte, cs)
	for i := range l1n {
		l2 := int(be.Uint64(f[l1+8*i:]) & 0x00fffffffffffe00)
		if l2 == 0 {
			continue
		}
		for j := range cs / 8 {
			e := be.Uint64(f[l2+8*j:])
			if e&(1<<62) == 0 {
				continue
			}
			off := int(e & (1<<x - 1))
			add := int(e >> x & (1<<(bits-8) - 1))
			end := min(len(f), off&^511+(add+1)*512)
			guest := (i*(cs/8) + j) * cs
			src := f[off:end]
			if _, err := Decode(dst, src); err != nil {
				t.Fatalf("cluster at guest %d: %v", guest, err)
			}
			want := raw[guest:min(len(raw), guest+cs)]
			if !bytes.Equal(dst[:len(want)], want) {
				t.Fatalf("cluster at guest %d: wrong data", guest)
			}
			check(t, src, cs)
			count++
		}
	}
	return count
}
