package configdrive

import (
	"bytes"
	"context"
	"testing"

	"github.com/byoi/byoi/internal/fat"
)

// TestFATImage: the demo's ESP reads back with byoi's FAT reader, under
// its own label, never config-2.
func TestFATImage(t *testing.T) {
	want := []byte("MZ not a real loader")
	img, err := FATImage(context.Background(), map[string][]byte{"EFI/BOOT/BOOTX64.EFI": want}, "ESP")
	if err != nil {
		t.Fatal(err)
	}
	fs, err := fat.Open(bytes.NewReader(img), int64(len(img)))
	if err != nil {
		t.Fatal(err)
	}
	e, ok, err := fs.Lookup(`\EFI\BOOT\BOOTX64.EFI`)
	if err != nil || !ok {
		t.Fatalf("lookup: %v %v", ok, err)
	}
	got, err := fs.ReadFile(e, 1<<20)
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("read %q, %v", got, err)
	}
	if !bytes.Equal(img[43:54], []byte("ESP        ")) {
		t.Fatalf("label %q", img[43:54])
	}
	if _, err := FATImage(context.Background(), nil, "config-2"); err == nil {
		t.Fatal("a config-2 label was accepted")
	}
}
