package testimage_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/byoi/byoi/internal/testimage"

	"github.com/byoi/byoi/internal/testutil"
)

// TestGPTAcceptedBySgdisk checks the builder against an independent judge.
func TestGPTAcceptedBySgdisk(t *testing.T) {
	testutil.RequireCommand(t, "sgdisk")
	const mib = 1 << 20
	img, err := testimage.GPT(8*mib, 512, []testimage.Part{
		{Name: "EFI system", Type: testimage.TypeESP, Start: 1 * mib, Size: 2 * mib, Fill: testimage.FillMixed},
		{Name: "root", Type: testimage.TypeLinux, Start: 3 * mib, Size: 4 * mib, Fill: testimage.FillMixed},
	}, 7)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "img")
	if err := os.WriteFile(p, img, 0o644); err != nil {
		t.Fatal(err)
	}
	out := testutil.Run(t, "sgdisk", "-v", p)
	if !strings.Contains(out, "No problems found") {
		t.Fatalf("sgdisk -v: %s", out)
	}
	out = testutil.Run(t, "sgdisk", "-p", p)
	for _, want := range []string{"EFI system", "root", "EF00", "8300"} {
		if !strings.Contains(out, want) {
			t.Errorf("sgdisk -p lacks %q:\n%s", want, out)
		}
	}
}

func TestGPTRejectsBadInput(t *testing.T) {
	if _, err := testimage.GPT(8<<20, 1000, nil, 1); err == nil {
		t.Error("sector size 1000 accepted")
	}
	if _, err := testimage.GPT(8<<20, 512, []testimage.Part{{Type: testimage.TypeLinux, Start: 0, Size: 1 << 20}}, 1); err == nil {
		t.Error("partition over the GPT accepted")
	}
	if _, err := testimage.GPT(8<<20, 512, []testimage.Part{{Type: "nope", Start: 1 << 20, Size: 1 << 20}}, 1); err == nil {
		t.Error("bad GUID accepted")
	}
}
