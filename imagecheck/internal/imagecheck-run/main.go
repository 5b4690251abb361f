// Command imagecheck-run runs the image checks on a raw disk image, for
// measuring and trying them by hand (not a product command):
//
//	go run ./imagecheck/internal/imagecheck-run [-qcow2] [-boot-mode uefi] [-disk-driver nvme] [-nic-driver e1000e] [-mac M] [-configdrive] [-n RUNS] IMAGE
//
// With -qcow2 the image is a qcow2 file, read as a deploy reads the staged
// one before writing: imaging.CheckQcow2, then its virtual disk through
// imaging.OpenQcow2Disk (go-qcow2reader); each run opens it anew.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime/pprof"
	"strings"
	"time"

	"github.com/byoi/byoi/imagecheck"
	"github.com/byoi/byoi/imaging/qcow2"
)

func main() {
	bootMode := flag.String("boot-mode", "", "uefi or legacy")
	disk := flag.String("disk-driver", "", "comma-separated disk controller drivers")
	nic := flag.String("nic-driver", "", "a NIC's driver")
	mac := flag.String("mac", "", "that NIC's MAC")
	cd := flag.Bool("configdrive", false, "a ConfigDrive is requested")
	n := flag.Int("n", 1, "runs (the time of each is printed)")
	asJSON := flag.Bool("json", false, "print the report as JSON")
	isQcow2 := flag.Bool("qcow2", false, "IMAGE is a qcow2 file (its virtual disk is checked)")
	cpuProfile := flag.String("cpuprofile", "", "write a CPU profile of the runs to this file")
	flag.Parse()
	if flag.NArg() != 1 {
		flag.Usage()
		os.Exit(2)
	}
	f, err := os.Open(flag.Arg(0))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	st, _ := f.Stat()
	facts := imagecheck.Facts{BootMode: *bootMode, ConfigDrive: *cd}
	if *disk != "" {
		facts.DiskDrivers = strings.Split(*disk, ",")
	}
	if *nic != "" || *mac != "" {
		facts.NICs = []imagecheck.NIC{{Driver: *nic, MAC: *mac}}
	}
	if *cpuProfile != "" {
		pf, err := os.Create(*cpuProfile)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		if err := pprof.StartCPUProfile(pf); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		defer pprof.StopCPUProfile()
	}
	var rep *imagecheck.Report
	for i := 0; i < *n; i++ {
		start := time.Now()
		var disk io.ReaderAt = f
		size := st.Size()
		closeDisk := func() error { return nil }
		if *isQcow2 {
			info, err := qcow2.Check(f, st.Size(), "", 0)
			if err != nil {
				fmt.Fprintln(os.Stderr, err)
				os.Exit(1)
			}
			if disk, closeDisk, err = qcow2.OpenDisk(f, st.Size(), info); err != nil {
				fmt.Fprintln(os.Stderr, err)
				os.Exit(1)
			}
			size = info.VirtualSize
		}
		rep, err = imagecheck.Check(context.Background(), disk, size, 512, facts, imagecheck.Options{})
		closeDisk()
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		fmt.Fprintf(os.Stderr, "run %d: %v, %d reads, %d KiB\n", i+1, time.Since(start), rep.Reads, rep.BytesRead>>10)
	}
	if *asJSON {
		b, _ := json.MarshalIndent(rep, "", "  ")
		fmt.Println(string(b))
		return
	}
	for _, fd := range rep.Findings {
		fmt.Println(fd)
	}
}
