package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/byoi/byoi/agent"
	"github.com/byoi/byoi/imagecheck"
	"github.com/byoi/byoi/job"
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
		configDrive              bool
		caCert, typ, efiPath     string
		stagingDir               string
		diskSize, sectorSize     int64
		connectTimeout, deadline time.Duration
		facts                    factFlags
		noChecks                 bool
	)
	fs.BoolVar(&jsonOut, "json", false, "print the report as JSON")
	fs.Var(&headers, "header", "HTTP header 'Name: value' sent with the download (repeatable; the value is never shown)")
	fs.StringVar(&caCert, "ca-cert", "", "PEM `file` of extra CA certificates for HTTPS")
	fs.StringVar(&typ, "type", "", "the job's image type, raw, qcow2 or ova: report the mismatch a deploy would refuse")
	fs.StringVar(&efiPath, "efi-bootloader-path", "", "the job's efiBootloaderPath: check the ESP holds it")
	fs.BoolVar(&configDrive, "configdrive", false, "the job has a ConfigDrive: with --disk-size, check there is room for it")
	fs.Int64Var(&diskSize, "disk-size", 0, "target disk size in `bytes`: check the image fits (0: unknown)")
	fs.Int64Var(&sectorSize, "sector-size", 0, "target disk logical sector size, 512 or 4096: check the image matches (0: unknown)")
	fs.StringVar(&stagingDir, "staging-dir", "", "`directory` for the temporary copy of a URL whose server ignores Range (default: the system temp dir)")
	fs.DurationVar(&connectTimeout, "connect-timeout", 30*time.Second, "connect and response-header timeout")
	fs.DurationVar(&deadline, "timeout", 0, "give up after this long (0: never)")
	fs.BoolVar(&verbose, "v", false, "verbose log on stderr")
	facts.register(fs)
	fs.BoolVar(&noChecks, "no-checks", false, "do not check the image's own system (filesystems, fstab, kernel, cloud-init, network)")
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
	if typ != "" && typ != "raw" && typ != "qcow2" && typ != "ova" {
		return usagef("--type must be raw, qcow2 or ova, got %q", typ)
	}
	switch sectorSize {
	case 0, 512, 1024, 2048, 4096:
	default:
		return usagef("--sector-size must be 512, 1024, 2048 or 4096, got %d", sectorSize)
	}
	if diskSize < 0 {
		return usagef("--disk-size must not be negative")
	}
	var hdrs []job.Header
	for _, h := range headers {
		hdr, err := job.ParseHeaderFlag(h)
		if err != nil {
			return err
		}
		hdrs = append(hdrs, hdr)
	}
	var caPEM []byte
	if caCert != "" {
		var err error
		if caPEM, err = readLimited(caCert, maxCACertSize); err != nil {
			return fmt.Errorf("--ca-cert: %w", err)
		}
	}
	if deadline > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, deadline)
		defer cancel()
	}
	if !agent.IsURL(src) && (len(hdrs) > 0 || caPEM != nil) {
		return usagef("--header and --ca-cert apply to a URL, not to a local file")
	}
	inv, fl, err := facts.facts()
	if err != nil {
		return err
	}
	ins, err := agent.Inspect(ctx, src, agent.SourceOptions{
		InspectOptions: agent.InspectOptions{EFIBootloaderPath: efiPath, DiskSize: diskSize, DiskSectorSize: sectorSize, DeclaredType: typ, ConfigDrive: configDrive,
			Facts: merged(inv, fl, "", 1), NoChecks: noChecks},
		Headers:        hdrs,
		CACertPEM:      caPEM,
		ConnectTimeout: connectTimeout,
		StagingDir:     stagingDir,
		Logger:         newLogger(stderr, verbose),
	})
	if err != nil {
		return err
	}
	rep, via := ins.InspectReport, ins.Via
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

// displaySource shows a URL without its user info, query and fragment
// (pre-signed URLs carry their credentials there).
func displaySource(s string) string {
	if !agent.IsURL(s) {
		return s
	}
	return job.RedactURL(s)
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
	if r.Compression != "" {
		fmt.Fprintf(w, "compression: %s (a compressed raw image: decompressed as it streams; its size is known once deployed)\n", r.Compression)
	}
	if o := r.OVA; o != nil {
		fmt.Fprintf(w, "OVA: %d disk(s) in the OVF", len(o.Disks))
		if o.Manifest != "" {
			fmt.Fprintf(w, ", manifest %s", o.Manifest)
		}
		fmt.Fprintln(w)
		for _, d := range o.Disks {
			mark := " "
			if d.ID == o.Boot {
				mark = "*"
			}
			fmt.Fprintf(w, "  %s %-12s %-24s %-18s %s\n", mark, d.ID, d.File, d.Format, humanBytes(d.Capacity))
		}
		if v := o.VMDK; v != nil {
			fmt.Fprintf(w, "VMDK: %s (version %d), capacity %s, grains of %s, compressed %s\n", v.CreateType, v.Version, humanBytes(v.Capacity), humanBytes(v.GrainSize), yesNo(v.Compressed, "yes", "no"))
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
	if c := r.Checks; c != nil {
		printChecks(w, c)
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

// printChecks prints the image checks' report: the filesystems read, the
// kernel, then each finding with its severity, code and file.
func printChecks(w io.Writer, c *imagecheck.Report) {
	for _, f := range c.Filesystems {
		state := "not examined"
		if f.Examined {
			state = "examined"
		}
		if f.Mount != "" {
			state += ", mounted at " + f.Mount
		}
		typ := f.Type
		if typ == "" {
			typ = "unknown"
		}
		fmt.Fprintf(w, "filesystem: partition %d %s", f.Partition, typ)
		if f.UUID != "" {
			fmt.Fprintf(w, " UUID=%s", f.UUID)
		}
		if f.Label != "" {
			fmt.Fprintf(w, " LABEL=%s", oneLine(f.Label))
		}
		fmt.Fprintf(w, " (%s)\n", state)
	}
	if k := c.Kernel; k != nil {
		fmt.Fprintf(w, "kernel: %s (%s", oneLine(k.Path), oneLine(k.Source))
		if k.Version != "" {
			fmt.Fprintf(w, ", version %s", oneLine(k.Version))
		}
		fmt.Fprintln(w, ")")
		for _, i := range k.Initrds {
			if len(k.InitrdSegments) > 0 {
				fmt.Fprintf(w, "initramfs: %s (%s)\n", oneLine(i), strings.Join(k.InitrdSegments, " + "))
			} else {
				fmt.Fprintf(w, "initramfs: %s (not read: nothing needed from it)\n", oneLine(i))
			}
		}
	}
	if c.Reads > 0 {
		fmt.Fprintf(w, "image checks: %d reads, %s read, %s\n", c.Reads, humanBytes(c.BytesRead), c.Duration.Round(time.Millisecond))
	}
	if len(c.Findings) == 0 {
		fmt.Fprintln(w, "findings: none")
		return
	}
	fmt.Fprintf(w, "findings (%d):\n", len(c.Findings))
	for _, f := range c.Findings {
		fmt.Fprintf(w, "  - %s\n", oneLine(f.String()))
	}
}
