// Command benchqcow2 is a benchmark helper (bench/bench-qcow2.sh): it
// generates a raw test image with mixed content, or converts a local qcow2
// file onto a local sparse file with qcow2.Convert. It only ever
// writes the files it is told to create.
package main

import (
	"context"
	"flag"
	"fmt"
	"io/fs"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime/pprof"
	"strings"
	"time"

	"github.com/byoi/byoi/blockdev"
	"github.com/byoi/byoi/imaging/qcow2"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "benchqcow2:", err)
		os.Exit(1)
	}
}

func run() error {
	gen := flag.String("gen", "", "write a raw image with mixed content to this new file")
	size := flag.Int64("size", 4<<30, "virtual size for -gen")
	data := flag.Int64("data", 1536<<20, "bytes of data (real files, random and text) for -gen")
	files := flag.String("files", "/usr", "directory whose files (read in lexical order) fill most data blocks for -gen; empty: none")
	src := flag.String("src", "", "qcow2 file to convert")
	dst := flag.String("dst", "", "new sparse file to convert onto")
	workers := flag.Int("workers", 0, "ConvertOptions.Workers")
	chunk := flag.Int64("chunk", 0, "ConvertOptions.ChunkSize")
	cpuprof := flag.String("cpuprofile", "", "write a CPU profile here")
	flag.Parse()
	if *cpuprof != "" {
		pf, err := os.Create(*cpuprof)
		if err != nil {
			return err
		}
		if err := pprof.StartCPUProfile(pf); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	if *gen != "" {
		return generate(*gen, *size, *data, *files)
	}
	if *src == "" || *dst == "" {
		return fmt.Errorf("need -gen, or -src and -dst")
	}
	qcow2.RegisterDecompressors()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	qcow2.RouteWarnings(log)
	f, err := os.Open(*src)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	info, err := qcow2.Check(f, st.Size(), "", 0)
	if err != nil {
		return err
	}
	out, err := os.OpenFile(*dst, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if err := out.Truncate(info.VirtualSize); err != nil {
		return err
	}
	if err := out.Close(); err != nil {
		return err
	}
	d, err := blockdev.Open(*dst, blockdev.OpenOptions{})
	if err != nil {
		return err
	}
	defer d.Close()
	start := time.Now()
	err = qcow2.Convert(context.Background(), f, st.Size(), info, d, qcow2.ConvertOptions{
		Workers: *workers, ChunkSize: *chunk, Logger: log,
	})
	if err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "converted %d bytes in %v\n", info.VirtualSize, time.Since(start).Round(time.Millisecond))
	return nil
}

// generate writes size bytes: data bytes of 1 MiB blocks spread over the
// image, the rest unwritten (zeros), and a few explicit zero blocks. Of the
// data blocks, about 70% hold the contents of real files under filesDir
// (binaries, libraries, text: they compress like a real system's disk),
// 15% random bytes (already-compressed data) and 15% repeated text. Without
// filesDir it is half random, half text.
func generate(path string, size, data int64, filesDir string) error {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		return err
	}
	const blk = 1 << 20
	rng := rand.New(rand.NewPCG(1, 2))
	text := []byte(strings.Repeat("Lorem ipsum dolor sit amet, consectetur adipiscing elit 0123456789.\n", blk/64))[:blk]
	buf := make([]byte, blk)
	var real *fileStream
	if filesDir != "" {
		real = newFileStream(filesDir)
		defer real.close()
	}
	nblk := size / blk
	want := data / blk
	for i := int64(0); i < nblk; i++ {
		// Pick blocks so that about want of nblk hold data.
		if rng.Int64N(nblk) >= want {
			if rng.IntN(50) == 0 {
				if _, err := f.WriteAt(make([]byte, blk), i*blk); err != nil {
					return err
				}
			}
			continue
		}
		b := buf
		kind := rng.IntN(100)
		switch {
		case real != nil && kind < 70:
			if err := real.fill(b); err != nil {
				return err
			}
		case (real != nil && kind < 85) || (real == nil && kind < 50):
			for j := 0; j < blk; j += 8 {
				v := rng.Uint64()
				for k := 0; k < 8; k++ {
					b[j+k] = byte(v >> (8 * k))
				}
			}
		default:
			b = text
		}
		if _, err := f.WriteAt(b, i*blk); err != nil {
			return err
		}
	}
	return f.Close()
}

// fileStream yields the concatenated contents of the regular files under a
// directory, in lexical order, starting over when it runs out.
type fileStream struct {
	paths []string
	next  int
	cur   *os.File
}

func newFileStream(dir string) *fileStream {
	s := &fileStream{}
	_ = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			s.paths = append(s.paths, p)
		}
		return nil
	})
	return s
}

func (s *fileStream) fill(b []byte) error {
	if len(s.paths) == 0 {
		return fmt.Errorf("no readable files for -files")
	}
	for len(b) > 0 {
		if s.cur == nil {
			f, err := os.Open(s.paths[s.next%len(s.paths)])
			s.next++
			if err != nil {
				if s.next > 2*len(s.paths) {
					return fmt.Errorf("no readable files for -files: %w", err)
				}
				continue
			}
			s.cur = f
		}
		n, err := s.cur.Read(b)
		b = b[n:]
		if err != nil {
			s.cur.Close()
			s.cur = nil
		}
	}
	return nil
}

func (s *fileStream) close() {
	if s.cur != nil {
		s.cur.Close()
	}
}
