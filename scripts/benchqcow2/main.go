// Command benchqcow2 is a benchmark helper (scripts/bench-qcow2.sh): it
// generates a raw test image with mixed content, or converts a local qcow2
// file onto a local sparse file with imaging.ConvertQcow2. It only ever
// writes the files it is told to create.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"runtime/pprof"
	"strings"
	"time"

	"github.com/byoi/byoi/blockdev"
	"github.com/byoi/byoi/imaging"
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
	data := flag.Int64("data", 1536<<20, "bytes of data (random and text) for -gen")
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
		return generate(*gen, *size, *data)
	}
	if *src == "" || *dst == "" {
		return fmt.Errorf("need -gen, or -src and -dst")
	}
	imaging.RegisterDecompressors()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	imaging.RouteQcow2Warnings(log)
	f, err := os.Open(*src)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	info, err := imaging.CheckQcow2(f, st.Size(), "", 0)
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
	err = imaging.ConvertQcow2(context.Background(), f, st.Size(), d, imaging.ConvertOptions{
		Workers: *workers, ChunkSize: *chunk, Logger: log,
	})
	if err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "converted %d bytes in %v\n", info.VirtualSize, time.Since(start).Round(time.Millisecond))
	return nil
}

// generate writes size bytes: data bytes of 1 MiB blocks, half random and
// half text, spread over the image, the rest unwritten (zeros); a few
// explicit zero blocks too.
func generate(path string, size, data int64) error {
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
		if rng.IntN(2) == 0 {
			for j := 0; j < blk; j += 8 {
				v := rng.Uint64()
				for k := 0; k < 8; k++ {
					b[j+k] = byte(v >> (8 * k))
				}
			}
		} else {
			b = text
		}
		if _, err := f.WriteAt(b, i*blk); err != nil {
			return err
		}
	}
	return f.Close()
}
