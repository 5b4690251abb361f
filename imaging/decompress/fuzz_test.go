package decompress_test

import (
	"bytes"
	"compress/gzip"
	"errors"
	"io"
	"testing"

	"github.com/byoi/byoi/imaging/decompress"
)

// FuzzStream: the stream decompressors and the xz container
// walk never panic or hang, and end with io.EOF only on a whole stream.
func FuzzStream(f *testing.F) {
	img := make([]byte, 64<<10)
	copy(img[510:], "\x55\xaa")
	copy(img[512:], "EFI PART")
	for i := 4096; i < 20000; i++ {
		img[i] = byte(i / 7)
	}
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(img)
	zw.Close()
	f.Add(gz.Bytes())
	for _, s := range fuzzSeeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		head := b[:min(len(b), 64)]
		rc, _, err := decompress.Stream(head, bytes.NewReader(b[len(head):]))
		if err != nil {
			return
		}
		defer rc.Close()
		n, err := io.Copy(io.Discard, io.LimitReader(rc, 64<<20))
		if err != nil && !errors.Is(err, decompress.ErrRefused) {
			t.Fatalf("error %v after %d bytes is not a decompress.Error", err, n)
		}
	})
}
