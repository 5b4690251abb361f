package inflate

import (
	"bytes"
	"compress/flate"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	kflate "github.com/klauspost/compress/flate"
)

const benchCluster = 64 << 10

// benchData returns n bytes like a disk image: machine code (the go
// binary), Go source text, zero runs and synthetic mixed data, in pieces
// of 4-16 KiB shuffled together, so that each 64 KiB cluster mixes them.
func benchData(n int) []byte {
	rng := rand.New(rand.NewPCG(3, 4))
	var bin, text []byte
	if b, err := os.ReadFile(filepath.Join(runtime.GOROOT(), "bin", "go")); err == nil && len(b) > 4<<20 {
		bin = b[1<<20 : 4<<20]
	}
	files, _ := filepath.Glob(filepath.Join(runtime.GOROOT(), "src", "net", "http", "*.go"))
	for _, f := range files {
		if b, err := os.ReadFile(f); err == nil {
			text = append(text, b...)
		}
	}
	syn := mixed(rng, n)
	out := make([]byte, 0, n)
	for len(out) < n {
		size := 4096 + rng.IntN(12<<10)
		switch k := rng.IntN(6); {
		case k < 2 && len(bin) > size:
			o := rng.IntN(len(bin) - size)
			out = append(out, bin[o:o+size]...)
		case k < 4 && len(text) > size:
			o := rng.IntN(len(text) - size)
			out = append(out, text[o:o+size]...)
		case k == 4:
			out = append(out, make([]byte, size)...)
		default:
			o := rng.IntN(len(syn) - size)
			out = append(out, syn[o:o+size]...)
		}
	}
	return out[:n]
}

// benchClusters compresses 64 KiB clusters at level 6 (qemu-img uses
// zlib's default level), as qcow2 stores them: raw deflate.
func benchClusters(tb testing.TB) [][]byte {
	data := benchData(64 * benchCluster)
	var out [][]byte
	for off := 0; off < len(data); off += benchCluster {
		var buf bytes.Buffer
		w, err := flate.NewWriter(&buf, 6)
		if err != nil {
			tb.Fatal(err)
		}
		w.Write(data[off : off+benchCluster])
		w.Close()
		out = append(out, buf.Bytes())
	}
	return out
}

func TestBenchClusters(t *testing.T) {
	for _, c := range benchClusters(t) {
		check(t, c, benchCluster)
	}
}

func BenchmarkDecode(b *testing.B) {
	clusters := benchClusters(b)
	total := 0
	for _, c := range clusters {
		total += len(c)
	}
	b.Logf("%d clusters of 64 KiB, compressed to %.1f%%", len(clusters), 100*float64(total)/float64(len(clusters)*benchCluster))
	dst := make([]byte, benchCluster)
	b.Run("inflate", func(b *testing.B) {
		b.SetBytes(benchCluster)
		for i := 0; b.Loop(); i++ {
			if _, err := Decode(dst, clusters[i%len(clusters)]); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("klauspost", func(b *testing.B) {
		b.SetBytes(benchCluster)
		fr := kflate.NewReader(bytes.NewReader(nil))
		br := bytes.NewReader(nil)
		for i := 0; b.Loop(); i++ {
			br.Reset(clusters[i%len(clusters)])
			fr.(kflate.Resetter).Reset(br, nil)
			if _, err := io.ReadFull(fr, dst); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("stdlib", func(b *testing.B) {
		b.SetBytes(benchCluster)
		fr := flate.NewReader(bytes.NewReader(nil))
		br := bytes.NewReader(nil)
		for i := 0; b.Loop(); i++ {
			br.Reset(clusters[i%len(clusters)])
			fr.(flate.Resetter).Reset(br, nil)
			if _, err := io.ReadFull(fr, dst); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkDecodeInterleaved decodes each cluster with the three decoders
// in turn and times each call with the thread's CPU time (the OS thread is
// locked), so that the ratios hold on a shared, loaded machine:
// x-klauspost and x-stdlib are Decode's throughput over theirs.
func BenchmarkDecodeInterleaved(b *testing.B) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	clusters := benchClusters(b)
	dst := make([]byte, benchCluster)
	kr := kflate.NewReader(bytes.NewReader(nil))
	sr := flate.NewReader(bytes.NewReader(nil))
	br := bytes.NewReader(nil)
	var tInf, tK, tS time.Duration
	b.SetBytes(3 * benchCluster)
	for i := 0; b.Loop(); i++ {
		c := clusters[i%len(clusters)]
		t0 := threadCPU()
		if _, err := Decode(dst, c); err != nil {
			b.Fatal(err)
		}
		t1 := threadCPU()
		br.Reset(c)
		kr.(kflate.Resetter).Reset(br, nil)
		if _, err := io.ReadFull(kr, dst); err != nil {
			b.Fatal(err)
		}
		t2 := threadCPU()
		br.Reset(c)
		sr.(flate.Resetter).Reset(br, nil)
		if _, err := io.ReadFull(sr, dst); err != nil {
			b.Fatal(err)
		}
		t3 := threadCPU()
		tInf += t1 - t0
		tK += t2 - t1
		tS += t3 - t2
	}
	mb := float64(b.N) * benchCluster / 1e6
	b.ReportMetric(mb/tInf.Seconds(), "inflate-cpuMB/s")
	b.ReportMetric(mb/tK.Seconds(), "klauspost-cpuMB/s")
	b.ReportMetric(mb/tS.Seconds(), "stdlib-cpuMB/s")
	b.ReportMetric(tK.Seconds()/tInf.Seconds(), "x-klauspost")
	b.ReportMetric(tS.Seconds()/tInf.Seconds(), "x-stdlib")
}
