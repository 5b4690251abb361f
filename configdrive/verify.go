package configdrive

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/byoi/byoi/internal/fat"
	"github.com/kdomanski/iso9660"
)

// Verify reads a config-2 filesystem back the way cloud-init will find it
// (sources/DataSourceConfigDrive.py: a filesystem labelled config-2 whose
// openstack/latest/meta_data.json holds a uuid) and checks it carries
// wantUUID. The agent runs it on what it wrote to the disk, so a drive
// cloud-init would ignore is a failed deployment, not a silent one. The
// ISO9660 side is read with github.com/kdomanski/iso9660, a reader
// independent of the go-diskfs writer, through Rock Ridge names: without
// them the file would be META_DAT.JSO and cloud-init would find nothing.
func Verify(r io.ReaderAt, size int64, f Format, wantUUID string) (err error) {
	var meta []byte
	switch f {
	case ISO9660:
		if size > MaxSize {
			return fmt.Errorf("%w: config-2 of %d bytes", ErrTooLarge, size)
		}
		img := make([]byte, size)
		if _, err := r.ReadAt(img, 0); err != nil {
			return fmt.Errorf("read back config-2: %w", err)
		}
		// kdomanski/iso9660 v0.4.0 knows Rock Ridge only by its 1.10
		// identifier (RRIP_1991A) and go-diskfs writes 1.12 (IEEE_P1282),
		// so the reader sees the ISO names (META_DAT.JSO). The Rock Ridge
		// name is checked here instead: it is stored (NM entry) only when
		// Rock Ridge is on, and without it cloud-init finds nothing.
		if !bytes.Contains(img, []byte("meta_data.json")) {
			return errors.New("read back config-2: no Rock Ridge name for " + MetaDataPath)
		}
		meta, err = readISOMeta(bytes.NewReader(img))
	case VFAT:
		meta, err = readFATMeta(io.NewSectionReader(r, 0, size), size)
	default:
		return fmt.Errorf("%w: unknown format %d", ErrInvalid, int(f))
	}
	if err != nil {
		return fmt.Errorf("read back config-2: %w", err)
	}
	var md struct {
		UUID string `json:"uuid"`
	}
	if err := json.Unmarshal(meta, &md); err != nil {
		return fmt.Errorf("read back config-2: %s is not valid JSON: %w", MetaDataPath, err)
	}
	if md.UUID != wantUUID {
		return fmt.Errorf("read back config-2: uuid %q, want %q", md.UUID, wantUUID)
	}
	return nil
}

const maxMetaSize = 16 << 20

// isoName is the ISO9660 level-1 name go-diskfs gives a file without Rock
// Ridge: 8.3, upper case ("meta_data.json" → "META_DAT.JSO").
func isoName(name string) string {
	base, ext, _ := strings.Cut(strings.ToUpper(name), ".")
	if len(base) > 8 {
		base = base[:8]
	}
	if len(ext) > 3 {
		ext = ext[:3]
	}
	if ext == "" {
		return base
	}
	return base + "." + ext
}

func readISOMeta(r io.ReaderAt) (meta []byte, err error) {
	// The reader indexes slices with values from the image; the image is
	// ours, but a panic must still end as an error, not a crash.
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("ISO9660 reader failed: %v", p)
		}
	}()
	img, err := iso9660.OpenImage(r)
	if err != nil {
		return nil, fmt.Errorf("open ISO9660: %w", err)
	}
	label, err := img.Label()
	if err != nil {
		return nil, fmt.Errorf("ISO9660 label: %w", err)
	}
	if got := strings.TrimRight(label, " \x00"); !strings.EqualFold(got, Label) {
		return nil, fmt.Errorf("ISO9660 label %q, want %q", got, Label)
	}
	cur, err := img.RootDir()
	if err != nil {
		return nil, fmt.Errorf("ISO9660 root: %w", err)
	}
	for _, name := range strings.Split(MetaDataPath, "/") {
		children, err := cur.GetChildren()
		if err != nil {
			return nil, fmt.Errorf("ISO9660 directory %s: %w", cur.Name(), err)
		}
		var next *iso9660.File
		for _, c := range children {
			if c.Name() == name || strings.EqualFold(c.Name(), isoName(name)) {
				next = c
				break
			}
		}
		if next == nil {
			return nil, fmt.Errorf("%s not found", MetaDataPath)
		}
		cur = next
	}
	if cur.IsDir() || cur.Size() > maxMetaSize {
		return nil, fmt.Errorf("%s is not a small file", MetaDataPath)
	}
	return io.ReadAll(cur.Reader())
}

func readFATMeta(r io.ReaderAt, size int64) ([]byte, error) {
	fs, err := fat.Open(r, size)
	if err != nil {
		return nil, err
	}
	if !strings.EqualFold(fs.Label, Label) {
		return nil, fmt.Errorf("FAT label %q, want %q", fs.Label, Label)
	}
	e, ok, err := fs.Lookup(MetaDataPath)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, errors.New(MetaDataPath + " not found")
	}
	return fs.ReadFile(e, maxMetaSize)
}
