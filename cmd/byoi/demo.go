package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/byoi/byoi/agent"
	"github.com/byoi/byoi/configdrive"
	"github.com/byoi/byoi/internal/testimage"
	"github.com/byoi/byoi/job"
)

// demoSSHKey is a public key whose private half was thrown away: the demo
// shows where a key goes, it does not open any door.
const demoSSHKey = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIO82/7e9WQiwfzkfAePAXbwRasmsmauPfV02uYKlHDB9 byoi-demo"

// demoImage builds the demo's raw GPT image: an EFI System Partition (a
// FAT filesystem holding a stand-in \EFI\BOOT\BOOTX64.EFI), boot code in
// the MBR (a stub that hands the boot back to the BIOS: int 18h) with a
// BIOS boot partition (where GRUB would keep its core image), and a Linux
// root partition filled with mixed data. Its boot setup passes the
// image checks (issue 26): a newcomer's first deploy shows no warning.
func demoImage(ctx context.Context) ([]byte, error) {
	const mib = 1 << 20
	img, err := testimage.GPT(64*mib, 512, []testimage.Part{
		{Name: "EFI system", Type: testimage.TypeESP, Start: 1 * mib, Size: 16 * mib},
		{Name: "root", Type: testimage.TypeLinux, Start: 17 * mib, Size: 45 * mib, Fill: testimage.FillMixed},
		{Name: "bios", Type: testimage.TypeBIOSBoot, Start: 62 * mib, Size: 1 * mib},
	}, 1)
	if err != nil {
		return nil, err
	}
	esp, err := configdrive.FATImage(ctx, map[string][]byte{
		"EFI/BOOT/BOOTX64.EFI": []byte("MZ byoi demo: a stand-in for a UEFI loader, not one\n"),
	}, "ESP")
	if err != nil {
		return nil, err
	}
	copy(img[1*mib:], esp)
	copy(img, []byte{0xfa, 0xcd, 0x18, 0xf4, 0xeb, 0xfd}) // cli; int 18h; hlt; jmp $-1
	return img, nil
}

// cmdDemo builds a small image, serves it on 127.0.0.1 and deploys it onto
// a sparse file with a ConfigDrive, showing every step. It needs no
// arguments, no network and no root.
func cmdDemo(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	target := fs.String("disk", "byoi-demo-disk.img", "the sparse `file` to deploy onto (created or replaced)")
	jsonOut := fs.Bool("json", false, "print JSON status events")
	verbose := fs.Bool("v", false, "verbose log on stderr")
	if err := fs.Parse(args); err != nil {
		return err
	}
	img, err := demoImage(ctx)
	if err != nil {
		return fmt.Errorf("build demo image: %w", err)
	}
	qimg, err := testimage.Qcow2(img, 16)
	if err != nil {
		return fmt.Errorf("build demo qcow2: %w", err)
	}
	url, stop, err := serveLocal(map[string][]byte{"/demo.raw": img, "/demo.qcow2": qimg})
	if err != nil {
		return err
	}
	defer stop()
	fmt.Fprintf(stdout, "demo: built a %d MiB raw GPT image (an ESP with a stand-in loader, a BIOS boot partition and a root partition of sample data, not meant to boot) and its zlib-compressed qcow2 (%d KiB)\n",
		len(img)>>20, len(qimg)>>10)
	fmt.Fprintf(stdout, "demo: serving them at %s/demo.raw and %s/demo.qcow2\n", url, url)

	const diskSize = 256 << 20
	if err := createSparse(*target, diskSize); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "demo: target %s, a sparse file of %d MiB\n", *target, diskSize>>20)
	for i, src := range []struct {
		typ  string
		data []byte
	}{{"raw", img}, {"qcow2", qimg}} {
		sum := sha256.Sum256(src.data)
		j := &job.Job{
			ImageURL: url + "/demo." + src.typ, ImageType: src.typ,
			Checksum: hex.EncodeToString(sum[:]), ChecksumType: "sha256",
			DiskGroupID: 1,
			ConfigDrive: &job.ConfigDrive{
				Hostname: "byoi-demo",
				SSHKey:   demoSSHKey,
				UserData: []byte("#cloud-config\nruncmd:\n  - echo hello from byoi\n"),
				Metadata: map[string]string{"deployed-by": "byoi demo"},
			},
		}
		fmt.Fprintf(stdout, "\ndemo %d/2: deploying the %s image with a sha256 check and a ConfigDrive (hostname byoi-demo)\n", i+1, src.typ)
		if err := demoDeploy(ctx, j, *target, stdout, stderr, *jsonOut, *verbose); err != nil {
			return err
		}
	}
	fmt.Fprintf(stdout, "\ndemo: done. Look at it with: sfdisk -l %s; sgdisk -v %s\n", *target, *target)
	return nil
}

func demoDeploy(ctx context.Context, j *job.Job, target string, stdout, stderr io.Writer, jsonOut, verbose bool) error {
	rep := newRenderer(stdout, stderr, jsonOut)
	res, err := agent.Run(ctx, j, agent.Env{Target: target, Options: agent.Options{Logger: newLogger(stderr, verbose)}, Report: rep})
	rep.close()
	if err != nil {
		return err
	}
	if !jsonOut {
		printResult(stdout, res)
	}
	return nil
}

// createSparse creates (or truncates) a sparse file of size bytes.
func createSparse(path string, size int64) error {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return fmt.Errorf("create %s: %w", path, err)
	}
	if err := f.Truncate(size); err != nil {
		f.Close()
		return fmt.Errorf("size %s: %w", path, err)
	}
	return f.Close()
}

// serveLocal serves files on 127.0.0.1 on a free port (with Range support,
// through http.ServeContent) and returns the base URL and a stop function.
func serveLocal(files map[string][]byte) (string, func(), error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, fmt.Errorf("listen on 127.0.0.1: %w", err)
	}
	mux := http.NewServeMux()
	for name, data := range files {
		mux.HandleFunc(name, func(w http.ResponseWriter, r *http.Request) {
			http.ServeContent(w, r, name, time.Time{}, bytesReadSeeker(data))
		})
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			fmt.Fprintln(os.Stderr, "demo server:", err)
		}
	}()
	return "http://" + ln.Addr().String(), func() { srv.Close() }, nil
}

func bytesReadSeeker(b []byte) io.ReadSeeker { return bytes.NewReader(b) }
