package testimage_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/byoi/byoi/internal/testimage"

	"github.com/byoi/byoi/internal/testutil"
)

// TestQcow2JudgedByQemuImg checks the writer with qemu-img: the image is
// consistent (check) and converts back to the exact raw bytes (compare).
func TestQcow2JudgedByQemuImg(t *testing.T) {
	testutil.RequireCommand(t, "qemu-img")
	const mib = 1 << 20
	raw, err := testimage.GPT(12*mib, 512, []testimage.Part{
		{Name: "a", Type: testimage.TypeLinux, Start: 1 * mib, Size: 10 * mib, Fill: testimage.FillMixed},
	}, 3)
	if err != nil {
		t.Fatal(err)
	}
	raw = raw[:len(raw)-1000] // a size that is not a cluster multiple
	for _, c := range []struct {
		bits   uint
		layout testimage.Qcow2LayoutKind
	}{{9, testimage.TablesFirst}, {16, testimage.TablesFirst}, {21, testimage.TablesFirst}, {16, testimage.TablesLast}} {
		bits := c.bits
		q, err := testimage.Qcow2Layout(raw, bits, c.layout)
		if err != nil {
			t.Fatal(err)
		}
		// A third of the data is random, a third zeros, a third text.
		if bits == 16 && len(q) > len(raw)*6/10 {
			t.Errorf("cluster bits %d: %d bytes for %d raw: not compressed", bits, len(q), len(raw))
		}
		dir := t.TempDir()
		qp, rp := filepath.Join(dir, "img.qcow2"), filepath.Join(dir, "img.raw")
		if err := os.WriteFile(qp, q, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(rp, raw, 0o644); err != nil {
			t.Fatal(err)
		}
		out := testutil.Run(t, "qemu-img", "check", qp)
		if !strings.Contains(out, "No errors were found") {
			t.Errorf("cluster bits %d: qemu-img check: %s", bits, out)
		}
		info := testutil.Run(t, "qemu-img", "info", qp)
		if !strings.Contains(info, "compression type: zlib") || !strings.Contains(info, "compat: 1.1") {
			t.Errorf("qemu-img info: %s", info)
		}
		testutil.Run(t, "qemu-img", "compare", "-f", "qcow2", "-F", "raw", qp, rp)
	}
}
