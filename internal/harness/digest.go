package harness

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// MakeSparse creates (or truncates) a sparse file of size bytes.
func MakeSparse(path string, size int64) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_TRUNC|os.O_RDWR, 0o644)
	if err != nil {
		return err
	}
	if err := f.Truncate(size); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// MakeDecoy creates a sparse disk holding 1 MiB of random bytes at 1 MiB
// and 1 MiB before the end (not bootable: LBA 0 stays zero) and returns
// its ContentDigest, to prove later that nothing wrote it.
func MakeDecoy(path string, size int64) (string, error) {
	if err := MakeSparse(path, size); err != nil {
		return "", err
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return "", err
	}
	buf := make([]byte, 1<<20)
	for _, off := range []int64{1 << 20, size - 2<<20} {
		rand.Read(buf)
		if _, err := f.WriteAt(buf, off); err != nil {
			f.Close()
			return "", err
		}
	}
	if err := f.Close(); err != nil {
		return "", err
	}
	return ContentDigest(path)
}

// ContentDigest hashes a sparse file's content: every non-zero 64 KiB
// block with its offset (holes and zero blocks read as zero either way),
// reading only the file's data extents (SEEK_DATA/SEEK_HOLE).
func ContentDigest(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return "", err
	}
	h := sha256.New()
	fmt.Fprintf(h, "size %d\n", st.Size())
	buf := make([]byte, 64<<10)
	zero := make([]byte, len(buf))
	fd := int(f.Fd())
	var off int64
	for off < st.Size() {
		data, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if err != nil {
			break // ENXIO: no data after off
		}
		hole, err := unix.Seek(fd, data, unix.SEEK_HOLE)
		if err != nil {
			return "", err
		}
		for p := data &^ int64(len(buf)-1); p < hole; p += int64(len(buf)) {
			n, err := f.ReadAt(buf, p)
			if err != nil && !errors.Is(err, io.EOF) {
				return "", err
			}
			if n > 0 && string(buf[:n]) != string(zero[:n]) {
				fmt.Fprintf(h, "%d ", p)
				h.Write(buf[:n])
			}
		}
		off = hole
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// SHA256File is the hex SHA-256 of a file.
func SHA256File(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
