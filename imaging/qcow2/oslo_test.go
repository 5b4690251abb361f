package qcow2_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/byoi/byoi/imaging/internal/imagingtest"
	"github.com/byoi/byoi/imaging/qcow2"
	"github.com/byoi/byoi/internal/testutil"
)

// The qcow2 cases of OpenStack's format inspector (oslo.utils,
// oslo_utils/tests/imageutils/test_format_inspector.py), each made the way
// that suite makes it (qemu-img create, mkisofs, byte pokes), judged on both
// of byoi's paths: Stream (the streamed deploy) and Check (the staged one).
// Where oslo calls an image safe, byoi converts it to what qemu-img convert
// makes; where oslo calls it unsafe or not qcow2, byoi refuses it with
// nothing written.

// osloVerdict runs img through Stream (onto a target of 0xEE) and Check and
// returns their errors; both must agree.
func osloVerdict(t *testing.T, img []byte, virtual int64) (dst *imagingtest.MemTarget, streamErr error) {
	t.Helper()
	dst = imagingtest.NewMemTarget(max(virtual, 1<<20)+1<<20, 0xEE)
	_, streamErr = streamDeploy(context.Background(), bytes.NewReader(img), int64(len(img)), dst, qcow2.StreamOptions{})
	var ns *qcow2.NotStreamableError
	if errors.As(streamErr, &ns) {
		t.Fatalf("not streamable (%v): these layouts stream", streamErr)
	}
	_, checkErr := qcow2.Check(bytes.NewReader(img), int64(len(img)), "", dst.Size())
	if (streamErr == nil) != (checkErr == nil) {
		t.Fatalf("Stream and Check disagree: Stream %v, Check %v", streamErr, checkErr)
	}
	if streamErr != nil && dst.Writes != 0 {
		t.Fatalf("%d writes before the refusal (%v)", dst.Writes, streamErr)
	}
	return dst, streamErr
}

func qemuVirtualSize(t *testing.T, path string) int64 {
	t.Helper()
	var info struct {
		VirtualSize int64 `json:"virtual-size"`
	}
	if err := json.Unmarshal([]byte(testutil.Run(t, "qemu-img", "info", "--output=json", path)), &info); err != nil {
		t.Fatal(err)
	}
	return info.VirtualSize
}

// TestOsloSafeSizes: oslo's test_format for qcow2: empty images of 7, 512,
// 513 and 2057 MiB made by qemu-img create are safe, with qemu-img info's
// virtual size. Both paths accept them and zero the whole virtual disk
// (nothing of the old contents left, nothing else written).
func TestOsloSafeSizes(t *testing.T) {
	testutil.RequireCommand(t, "qemu-img")
	dir := t.TempDir()
	for _, mib := range []int64{7, 512, 513, 2057} {
		p := filepath.Join(dir, "empty.qcow2")
		testutil.Run(t, "qemu-img", "create", "-q", "-f", "qcow2", p, strconv.FormatInt(mib, 10)+"M")
		virtual := qemuVirtualSize(t, p)
		if virtual != mib<<20 {
			t.Fatalf("qemu-img info says %d bytes for %d MiB", virtual, mib)
		}
		img, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		dst, _ := imagingtest.FileTarget(t, virtual+1<<20, 0, false)
		old := bytes.Repeat([]byte{0xEE}, 1<<20)
		for _, off := range []int64{0, virtual / 2, virtual - 1<<20} {
			if _, err := dst.WriteAt(old, off); err != nil {
				t.Fatal(err)
			}
		}
		res, err := streamDeploy(context.Background(), bytes.NewReader(img), int64(len(img)), dst, qcow2.StreamOptions{})
		if err != nil {
			t.Fatalf("%d MiB: %v", mib, err)
		}
		if res.Info.VirtualSize != virtual || res.Written != 0 || res.Zeroed != virtual {
			t.Fatalf("%d MiB: virtual %d written %d zeroed %d, want %d, 0, %d", mib, res.Info.VirtualSize, res.Written, res.Zeroed, virtual, virtual)
		}
		got := make([]byte, 1<<20)
		for _, off := range []int64{0, virtual / 2, virtual - 1<<20} {
			if _, err := dst.ReadAt(got, off); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, make([]byte, len(got))) {
				t.Fatalf("%d MiB: old contents left at %d", mib, off)
			}
		}
		if _, err := qcow2.Check(bytes.NewReader(img), int64(len(img)), "", dst.Size()); err != nil {
			t.Fatalf("%d MiB: Check: %v", mib, err)
		}
	}
}

// TestOsloUnsafe: oslo's test_qcow2_safety_checks (a backing file, a data
// file, a file that is not qcow2), test_qed_always_unsafe, test_invalid_data
// and test_bad_iso_qcow2 (a qcow2 header planted in an ISO's system area:
// "Multiple formats detected"): byoi refuses each, nothing written.
func TestOsloUnsafe(t *testing.T) {
	testutil.RequireCommand(t, "qemu-img", "genisoimage")
	dir := t.TempDir()
	path := func(n string) string { return filepath.Join(dir, n) }
	if err := os.WriteFile(path("backing"), []byte("foobar"), 0o600); err != nil {
		t.Fatal(err)
	}
	testutil.Run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", path("backing"), "-F", "raw", path("backed.qcow2"), "5M")
	testutil.Run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-o", "data_file="+path("data")+",data_file_raw=on", path("datafile.qcow2"), "5M")
	testutil.Run(t, "qemu-img", "create", "-q", "-f", "qed", path("image.qed"), "10M")
	// test_bad_iso_qcow2: the first 32 KiB of a qcow2, then an ISO.
	testutil.Run(t, "qemu-img", "create", "-q", "-f", "qcow2", path("orig.qcow2"), "10M")
	if err := os.WriteFile(path("zeros"), make([]byte, 4<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	testutil.Run(t, "genisoimage", "-quiet", "-V", "TEST", "-o", path("orig.iso"), path("zeros"))
	q, err := os.ReadFile(path("orig.qcow2"))
	if err != nil {
		t.Fatal(err)
	}
	iso, err := os.ReadFile(path("orig.iso"))
	if err != nil {
		t.Fatal(err)
	}
	if string(iso[32769:32774]) != "CD001" {
		t.Fatal("genisoimage made no volume descriptor at 32769")
	}
	bad := append(bytes.Clone(q[:32<<10]), iso[32<<10:]...)
	// The planted file must still parse as a qcow2 header, or the case
	// proves nothing.
	if _, err := qcow2.CheckHeader(bad[:4096], "", 1<<30); err != nil {
		t.Fatalf("the planted header does not parse: %v", err)
	}
	self, err := os.ReadFile("oslo_test.go")
	if err != nil {
		t.Fatal(err)
	}
	read := func(n string) []byte {
		b, err := os.ReadFile(path(n))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	for _, c := range []struct {
		name, why string
		img       []byte
	}{
		{"backing file", "backing file", read("backed.qcow2")},
		{"data file", "data file", read("datafile.qcow2")},
		{"not qcow2", "no QFI", read("backing")},
		{"qed", "no QFI", read("image.qed")},
		{"invalid data", "no QFI", self},
		{"qcow2 header in an ISO", "ISO 9660", bad},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := osloVerdict(t, c.img, 16<<20)
			if err == nil || !errors.Is(err, qcow2.ErrRefused) {
				t.Fatalf("err = %v, want a refusal", err)
			}
			if !strings.Contains(err.Error(), c.why) {
				t.Fatalf("err = %q, want it to say %q", err, c.why)
			}
		})
	}
}

// TestOsloFeatureFlags: oslo's test_qcow2_feature_flag_checks on a real
// qemu-img image: an unknown incompatible feature (the highest byte, or bit
// 7) and versions 1 and 4 are refused; the dirty bit is known (byoi
// converts the image, as qemu-img convert does); a version 2 image has no
// feature fields, so the same bytes there are an unknown header extension
// both qemu and byoi skip.
func TestOsloFeatureFlags(t *testing.T) {
	testutil.RequireCommand(t, "qemu-img")
	dir := t.TempDir()
	base := map[string][]byte{}
	for _, compat := range []string{"1.1", "0.10"} {
		p := filepath.Join(dir, compat+".qcow2")
		testutil.Run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-o", "compat="+compat, p, "8M")
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		base[compat] = b
	}
	poke := func(compat string, set map[int]byte) []byte {
		b := bytes.Clone(base[compat])
		for off, v := range set {
			b[off] = v
		}
		return b
	}
	for _, c := range []struct {
		name string
		img  []byte
		ok   bool
		why  string
	}{
		{"v3 no flags", poke("1.1", nil), true, ""},
		{"v3 unknown feature in the highest byte", poke("1.1", map[int]byte{0x48: 0x01}), false, "unknown incompatible features"},
		{"v3 dirty bit", poke("1.1", map[int]byte{0x4f: 0x01}), true, ""},
		{"v3 unknown bit 7", poke("1.1", map[int]byte{0x4f: 0x80}), false, "unknown incompatible features"},
		{"version 1", poke("1.1", map[int]byte{0x07: 1}), false, "version 1"},
		{"version 4", poke("1.1", map[int]byte{0x07: 4}), false, "version 4"},
		{"v2 with the same bytes", poke("0.10", map[int]byte{0x48: 0x01, 0x4f: 0x80}), true, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			dst, err := osloVerdict(t, c.img, 8<<20)
			if !c.ok {
				if err == nil || !errors.Is(err, qcow2.ErrRefused) || !strings.Contains(err.Error(), c.why) {
					t.Fatalf("err = %v, want a refusal saying %q", err, c.why)
				}
				return
			}
			if err != nil {
				t.Fatalf("refused: %v", err)
			}
			p := filepath.Join(t.TempDir(), "img.qcow2")
			if err := os.WriteFile(p, c.img, 0o600); err != nil {
				t.Fatal(err)
			}
			ref := filepath.Join(t.TempDir(), "ref.raw")
			testutil.Run(t, "qemu-img", "convert", "-q", "-O", "raw", p, ref)
			want, err := os.ReadFile(ref)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(dst.B[:len(want)], want) {
				t.Fatal("the converted disk differs from qemu-img convert's")
			}
		})
	}
}
