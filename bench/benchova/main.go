// Command benchova is a benchmark helper (bench/bench-ova.sh): it packs
// a VMDK file into an OVA (OVF descriptor, manifest, disk) in the member
// order VMware or VirtualBox writes, deploys an OVA onto a new sparse file
// with ova.Write, or deploys a compressed raw image onto a new
// sparse file with decompress.Stream and imaging.WriteRaw. It only
// ever writes the files it is told to create.
package main

import (
	"archive/tar"
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime/pprof"
	"time"

	"github.com/byoi/byoi/blockdev"
	"github.com/byoi/byoi/imaging"
	"github.com/byoi/byoi/imaging/decompress"
	"github.com/byoi/byoi/imaging/ova"
	"github.com/byoi/byoi/internal/testimage"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "benchova:", err)
		os.Exit(1)
	}
}

func run() error {
	pack := flag.String("pack", "", "write an OVA to this new file (with -vmdk, -capacity, -layout)")
	vmdk := flag.String("vmdk", "", "VMDK file to pack")
	capacity := flag.Int64("capacity", 0, "the disk's capacity in bytes, for the OVF descriptor")
	layout := flag.String("layout", "vmware", "member order: vmware (ovf, mf, vmdk) or virtualbox (ovf, vmdk, mf)")
	ovaPath := flag.String("ova", "", "OVA file to deploy")
	raw := flag.String("raw", "", "compressed (or plain) raw image file to deploy")
	dst := flag.String("dst", "", "new sparse file to deploy onto")
	size := flag.Int64("size", 0, "size of the new -dst file")
	workers := flag.Int("workers", 0, "OVAOptions.Workers")
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
	switch {
	case *pack != "":
		return packOVA(*pack, *vmdk, *capacity, *layout)
	case (*ovaPath != "" || *raw != "") && *dst != "" && *size > 0:
	default:
		return fmt.Errorf("need -pack, or -ova or -raw with -dst and -size")
	}
	out, err := os.OpenFile(*dst, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if err := out.Truncate(*size); err != nil {
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
	if *ovaPath != "" {
		f, err := os.Open(*ovaPath)
		if err != nil {
			return err
		}
		defer f.Close()
		st, err := f.Stat()
		if err != nil {
			return err
		}
		res, err := ova.Write(context.Background(), f, d, ova.Options{DeclaredSize: st.Size(), Workers: *workers})
		if err != nil {
			return err
		}
		fmt.Fprintf(os.Stderr, "deployed %s (%s, %d bytes) in %v, manifest %q\n", res.Disk, res.CreateType, res.VirtualSize, time.Since(start).Round(time.Millisecond), res.Manifest)
		return nil
	}
	f, err := os.Open(*raw)
	if err != nil {
		return err
	}
	defer f.Close()
	head := make([]byte, imaging.HeadSize)
	n, err := io.ReadFull(f, head)
	if err != nil && err != io.ErrUnexpectedEOF {
		return err
	}
	rc, format, err := decompress.Stream(head[:n], f)
	if err != nil {
		return err
	}
	defer rc.Close()
	res, err := imaging.WriteRaw(context.Background(), rc, d, imaging.RawOptions{})
	if err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "deployed %s raw, %d bytes, in %v\n", format, res.Written, time.Since(start).Round(time.Millisecond))
	return nil
}

// packOVA writes an OVA of the VMDK file: the OVF descriptor, a SHA256
// manifest and the disk, in the layout's order.
func packOVA(path, vmdk string, capacity int64, layout string) error {
	if layout != "vmware" && layout != "virtualbox" {
		return fmt.Errorf("layout %q", layout)
	}
	name := filepath.Base(vmdk)
	f, err := os.Open(vmdk)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return err
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return err
	}
	style := testimage.VMware
	if layout == "virtualbox" {
		style = testimage.VirtualBox
	}
	disk := testimage.OVFDisk{File: name, Capacity: capacity}
	if style == testimage.VMware {
		disk.FileSize = st.Size()
	}
	ovf := testimage.Member{Name: "vm.ovf", Data: testimage.OVF(style, []testimage.OVFDisk{disk})}
	mf := testimage.Manifest("SHA256", style == testimage.VirtualBox, ovf)
	mf = fmt.Appendf(mf, "SHA256(%s)= %s\n", name, hex.EncodeToString(h.Sum(nil)))
	out, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	bw := bufio.NewWriterSize(out, 1<<20)
	tw := tar.NewWriter(bw)
	small := func(n string, b []byte) error {
		if err := tw.WriteHeader(&tar.Header{Name: n, Mode: 0o644, Size: int64(len(b)), ModTime: time.Unix(1700000000, 0)}); err != nil {
			return err
		}
		_, err := tw.Write(b)
		return err
	}
	big := func() error {
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: st.Size(), ModTime: time.Unix(1700000000, 0)}); err != nil {
			return err
		}
		_, err := io.Copy(tw, f)
		return err
	}
	steps := []func() error{func() error { return small("vm.ovf", ovf.Data) }}
	if style == testimage.VMware {
		steps = append(steps, func() error { return small("vm.mf", mf) }, big)
	} else {
		steps = append(steps, big, func() error { return small("vm.mf", mf) })
	}
	for _, s := range steps {
		if err := s(); err != nil {
			return err
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	if err := bw.Flush(); err != nil {
		return err
	}
	return out.Close()
}
