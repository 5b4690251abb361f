package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/byoi/byoi/agent"
	"github.com/byoi/byoi/imaging"
)

// cmdInspect is `byoi inspect IMAGE|URL`: it prints what a deploy would do
// with an image, without writing anything anywhere (a local image is
// opened read-only; a URL is read through HTTP Range requests, or, when the
// server does not serve ranges, downloaded into memory or a temporary file
// that is removed).
//
// Exit status: 0 when the report was produced, even when it lists problems
// (they are data: read "problems", or the JSON field of that name); 1 when
// the image could not be read at all (missing file, download error); 2 on a
// usage error.
func cmdInspect(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("inspect", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		headers                  stringList
		jsonOut, verbose         bool
		caCert, typ, efiPath     string
		stagingDir               string
		diskSize, sectorSize     int64
		connectTimeout, deadline time.Duration
	)
	fs.BoolVar(&jsonOut, "json", false, "print the report as JSON")
	fs.Var(&headers, "header", "HTTP header 'Name: value' sent with the download (repeatable; the value is never shown)")
	fs.StringVar(&caCert, "ca-cert", "", "PEM `file` of extra CA certificates for HTTPS")
	fs.StringVar(&typ, "type", "", "the job's image type, raw or qcow2: report the mismatch a deploy would refuse")
	fs.StringVar(&efiPath, "efi-bootloader-path", "", "the job's efiBootloaderPath: check the ESP holds it")
	fs.Int64Var(&diskSize, "disk-size", 0, "target disk size in `bytes`: check the image fits (0: unknown)")
	fs.Int64Var(&sectorSize, "sector-size", 0, "target disk logical sector size, 512 or 4096: check the image matches (0: unknown)")
	fs.StringVar(&stagingDir, "staging-dir", "", "`directory` for the temporary copy of a URL whose server ignores Range (default: the system temp dir)")
	fs.DurationVar(&connectTimeout, "connect-timeout", 30*time.Second, "connect and response-header timeout")
	fs.DurationVar(&deadline, "timeout", 0, "give up after this long (0: never)")
	fs.BoolVar(&verbose, "v", false, "verbose log on stderr")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), "Usage: byoi inspect [flags] IMAGE|URL\n\nPrints what a deploy would do with the image, and every problem that would\nmake it fail or the server not boot. Writes nothing. Exit 0 when the report\nwas produced (problems included), 1 when the image could not be read.\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return usagef("want one IMAGE file or URL, got %d arguments", fs.NArg())
	}
	src := fs.Arg(0)
	if typ != "" && typ != "raw" && typ != "qcow2" {
		return usagef("--type must be raw or qcow2, got %q", typ)
	}
	switch sectorSize {
	case 0, 512, 1024, 2048, 4096:
	default:
		return usagef("--sector-size must be 512, 1024, 2048 or 4096, got %d", sectorSize)
	}
	if diskSize < 0 {
		return usagef("--disk-size must not be negative")
	}
	var hdrs []imaging.Header
	for _, h := range headers {
		hdr, err := agent.ParseHeaderFlag(h)
		if err != nil {
			return err
		}
		hdrs = append(hdrs, hdr)
	}
	var caPEM []byte
	if caCert != "" {
		var err error
		if caPEM, err = os.ReadFile(caCert); err != nil {
			return fmt.Errorf("--ca-cert: %w", err)
		}
	}
	if deadline > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, deadline)
		defer cancel()
	}
	log := newLogger(stderr, verbose)
	opts := agent.InspectOptions{EFIBootloaderPath: efiPath, DiskSize: diskSize, DiskSectorSize: sectorSize, DeclaredType: typ}

	var rep *agent.InspectReport
	var via string
	var err error
	if isURL(src) {
		rep, via, err = inspectURL(ctx, src, hdrs, caPEM, connectTimeout, stagingDir, opts, log)
	} else {
		if len(hdrs) > 0 || caPEM != nil {
			return usagef("--header and --ca-cert apply to a URL, not to a local file")
		}
		rep, err = inspectFile(ctx, src, opts)
		via = "local file"
	}
	if err != nil {
		return err
	}
	out := inspectOutput{Source: displaySource(src), Via: via, InspectReport: rep}
	if jsonOut {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(out)
	}
	printInspect(stdout, &out)
	return nil
}

// inspectOutput is the printed report: where the image came from, then
// agent.InspectReport's fields.
type inspectOutput struct {
	Source string `json:"source"`
	Via    string `json:"via"`
	*agent.InspectReport
}

func isURL(s string) bool {
	l := strings.ToLower(s)
	return strings.HasPrefix(l, "http://") || strings.HasPrefix(l, "https://")
}

// displaySource shows a URL without its user info, query and fragment
// (pre-signed URLs carry their credentials there).
func displaySource(s string) string {
	if !isURL(s) {
		return s
	}
	return imaging.RedactURL(s)
}

// inspectFile inspects a local image or block device, opened read-only.
func inspectFile(ctx context.Context, path string, opts agent.InspectOptions) (*agent.InspectReport, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open image: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("open image: %w", err)
	}
	if st.IsDir() {
		return nil, fmt.Errorf("open image: %s is a directory", path)
	}
	// Seek to the end: the size of a regular file and of a block device.
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return nil, fmt.Errorf("size of %s: %w", path, err)
	}
	return agent.Inspect(ctx, f, size, opts)
}

// inspectURL reads the image through HTTP Range requests (only what the
// inspection needs), and falls back to a whole download (imaging.Fetch,
// the deploy's download code, staged in memory or in a removed temporary
// file) when the server ignores Range, when the range requests fail (the
// download then gives the deploy's error message), or when the inspection
// needs more than the range budget.
func inspectURL(ctx context.Context, src string, hdrs []imaging.Header, caPEM []byte, connectTimeout time.Duration, stagingDir string, opts agent.InspectOptions, log *slog.Logger) (*agent.InspectReport, string, error) {
	tr, err := imaging.NewTransport(caPEM, connectTimeout)
	if err != nil {
		return nil, "", fmt.Errorf("--ca-cert: %w", err)
	}
	client := &http.Client{Transport: tr}
	defer tr.CloseIdleConnections()
	ra, err := agent.OpenHTTPRange(ctx, src, agent.HTTPRangeOptions{Client: client, Headers: hdrs})
	if err == nil {
		rep, err := agent.Inspect(ctx, ra, ra.Size(), opts)
		if err == nil {
			log.Info("inspected through range requests", "bytes", ra.Fetched(), "size", ra.Size())
			return rep, fmt.Sprintf("HTTP range requests (%d of %d bytes)", ra.Fetched(), ra.Size()), nil
		}
		if ctx.Err() != nil {
			return nil, "", err
		}
		log.Info("range inspection failed, downloading the whole image", "err", err)
	} else {
		if ctx.Err() != nil {
			return nil, "", err
		}
		log.Info("no range requests, downloading the whole image", "err", err)
	}

	stream, err := imaging.Fetch(ctx, src, imaging.FetchOptions{
		Headers:        hdrs,
		CACertPEM:      caPEM,
		ConnectTimeout: connectTimeout,
		Logger:         log,
	})
	if err != nil {
		return nil, "", err
	}
	defer stream.Close()
	if stagingDir == "" {
		stagingDir = os.TempDir()
	}
	staged, err := imaging.Stage(ctx, stream, imaging.StageOptions{
		DeclaredSize: stream.Size(),
		StagingDir:   stagingDir,
		Logger:       log,
	})
	if err != nil {
		var tb *imaging.TooBigError
		if errors.As(err, &tb) {
			return nil, "", fmt.Errorf("the image (%d bytes) fits neither in memory nor in %s (--staging-dir), and its server does not serve byte ranges: %w", tb.Size, stagingDir, err)
		}
		return nil, "", err
	}
	defer staged.Close()
	rep, err := agent.Inspect(ctx, staged, staged.Size(), opts)
	if err != nil {
		return nil, "", err
	}
	return rep, "whole download, staged in " + staged.Where(), nil
}

// printInspect prints the report for a person.
func printInspect(w io.Writer, o *inspectOutput) {
	r := o.InspectReport
	fmt.Fprintf(w, "image: %s (read via %s)\n", o.Source, o.Via)
	fmt.Fprintf(w, "format: %s, %d bytes (%s)\n", r.Format, r.FileSize, humanBytes(r.FileSize))
	if r.DeclaredType != "" {
		fmt.Fprintf(w, "declared type: %s\n", r.DeclaredType)
	}
	if r.VirtualSize > 0 {
		fmt.Fprintf(w, "virtual size: %d bytes (%s)\n", r.VirtualSize, humanBytes(r.VirtualSize))
	}
	if q := r.Qcow2; q != nil {
		features := "none"
		if len(q.Features) > 0 {
			features = strings.Join(q.Features, ", ")
		}
		fmt.Fprintf(w, "qcow2: version %d, cluster size %d, compression %s, features: %s, snapshots %d\n",
			q.Version, q.ClusterSize, q.Compression, features, q.Snapshots)
		if q.Accepted {
			fmt.Fprintf(w, "qcow2: accepted (%d data clusters, %d compressed)\n", q.AllocatedClusters, q.CompressedClusters)
		} else {
			fmt.Fprintf(w, "qcow2: refused: %s\n", q.Refused)
		}
	}
	if r.SectorSize > 0 {
		fmt.Fprintf(w, "sector size: %d\n", r.SectorSize)
	}
	if t := r.Table; t != nil {
		fmt.Fprintf(w, "partition table: %s, read with %d-byte sectors", t.Type, t.SectorSize)
		if t.DiskGUID != "" {
			fmt.Fprintf(w, ", disk GUID %s", t.DiskGUID)
		}
		if t.FromBackup {
			fmt.Fprint(w, ", read from the backup header")
		}
		fmt.Fprintln(w)
		fmt.Fprintf(w, "  %-3s %12s %12s  %-22s %s\n", "#", "start", "size", "type", "name")
		for _, p := range t.Partitions {
			typ := p.TypeName
			if typ == "" {
				typ = p.TypeGUID + p.MBRType
			}
			name := p.Name
			if p.Bootable {
				name = strings.TrimSpace(name + " (bootable)")
			}
			fmt.Fprintf(w, "  %-3d %12d %12s  %-22s %s\n", p.Number, p.Start, humanBytes(p.Size), typ, name)
		}
	}
	if b := r.Boot; b != nil {
		if b.ESP {
			fs := b.ESPFilesystem
			if fs == "" {
				fs = "unreadable"
			}
			fmt.Fprintf(w, "EFI System Partition: partition %d (%s)\n", b.ESPPartition, fs)
			fmt.Fprintf(w, `removable media path \EFI\BOOT\BOOTX64.EFI: %s`+"\n", yesNo(b.RemovablePath, "present", "missing"))
		} else {
			fmt.Fprintln(w, "EFI System Partition: none")
		}
		if b.BootloaderPath != "" {
			fmt.Fprintf(w, "EFI bootloader %s: %s\n", b.BootloaderPath, yesNo(b.BootloaderFound, "found", "not found"))
		}
		signs := "none"
		if len(b.LegacySigns) > 0 {
			signs = strings.Join(b.LegacySigns, ", ")
		}
		fmt.Fprintf(w, "legacy BIOS boot: %s (signs: %s)\n", yesNo(b.Legacy, "yes", "no"), signs)
	}
	if len(r.Problems) == 0 {
		fmt.Fprintln(w, "problems: none found")
		return
	}
	fmt.Fprintf(w, "problems (%d):\n", len(r.Problems))
	for _, p := range r.Problems {
		fmt.Fprintf(w, "  - %s\n", oneLine(p))
	}
}

func yesNo(b bool, yes, no string) string {
	if b {
		return yes
	}
	return no
}
