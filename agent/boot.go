package agent

import (
	"bytes"
	"fmt"
	"io"
	"strings"

	"github.com/byoi/byoi/internal/fat"
	"github.com/byoi/byoi/job"
	"github.com/byoi/byoi/partition"
)

// GPT partition type GUIDs and MBR types that matter for booting (UEFI 2.10
// section 5.3.3; GRUB's BIOS boot partition).
const (
	guidESP      = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
	guidBIOSBoot = "21686148-6449-6E6F-744E-656564454649"
	mbrTypeESP   = 0xEF
	// removablePath is where UEFI firmware looks without a boot entry
	// (UEFI 2.10 section 3.5.1.1, x86-64).
	removablePath = `\EFI\BOOT\BOOTX64.EFI`
)

// BootReport tells how a disk (or image) can boot.
type BootReport struct {
	ESP             *partition.Partition `json:"esp,omitempty"`
	ESPFilesystem   string               `json:"espFilesystem,omitempty"` // FAT12/16/32
	RemovablePath   bool                 `json:"removablePath"`           // \EFI\BOOT\BOOTX64.EFI present
	BootloaderPath  string               `json:"bootloaderPath,omitempty"`
	BootloaderFound bool                 `json:"bootloaderFound"`
	Legacy          bool                 `json:"legacyBootable"`
	LegacySigns     []string             `json:"legacySigns,omitempty"`
	Problems        []string             `json:"problems,omitempty"`
	// Warnings are the Problems that do not stop a deployment, as catalog
	// codes with their arguments.
	Warnings []Warning `json:"-"`
	// BootloaderProblem says why BootloaderPath was not found (also in
	// Problems); nil when found or not asked.
	BootloaderProblem error `json:"-"`
}

// Warning is a catalog code with its arguments.
type Warning struct {
	Code job.Code
	Args []any
}

// problem records a warning.
func (r *BootReport) problem(code job.Code, args ...any) {
	r.Warnings = append(r.Warnings, Warning{Code: code, Args: args})
	r.Problems = append(r.Problems, job.Text(code, args...))
}

func (r *BootReport) bootloaderMissing(why string) {
	r.BootloaderProblem = job.Errorf(job.BootloaderMissing, r.BootloaderPath, why)
	r.Problems = append(r.Problems, r.BootloaderProblem.Error())
}

// InspectBoot reads the image's EFI System Partition and its legacy boot
// signs. efiPath (the job's efiBootloaderPath, backslashes or slashes, any
// case) is looked up when given. Nothing is written.
func InspectBoot(d partition.Disk, t *partition.Table, efiPath string) BootReport {
	var r BootReport
	r.BootloaderPath = efiPath
	mbr := make([]byte, 512)
	if _, err := d.ReadAt(mbr, 0); err == nil {
		if !bytes.Equal(mbr[:440], make([]byte, 440)) {
			r.LegacySigns = append(r.LegacySigns, "boot code in the MBR")
		}
	}
	for i := range t.Partitions {
		p := &t.Partitions[i]
		switch {
		case strings.EqualFold(p.TypeGUID, guidESP) || (t.Type == "mbr" && p.MBRType == mbrTypeESP):
			if r.ESP == nil {
				r.ESP = p
			}
		case strings.EqualFold(p.TypeGUID, guidBIOSBoot):
			r.LegacySigns = append(r.LegacySigns, fmt.Sprintf("BIOS boot partition %d", p.Number))
		}
		if t.Type == "mbr" && p.Bootable {
			r.LegacySigns = append(r.LegacySigns, fmt.Sprintf("active partition %d", p.Number))
		}
	}
	// BIOS runs the MBR's code: without it nothing else matters.
	r.Legacy = len(r.LegacySigns) > 0 && r.LegacySigns[0] == "boot code in the MBR"
	if !r.Legacy {
		r.problem(job.WarnNoLegacyBoot)
	}
	if r.ESP == nil {
		r.problem(job.WarnNoESP)
		if efiPath != "" {
			r.bootloaderMissing("the image has no EFI System Partition")
		}
		return r
	}
	fs, err := fat.Open(io.NewSectionReader(d, r.ESP.Start, r.ESP.Size), r.ESP.Size)
	if err != nil {
		r.problem(job.WarnESPUnreadable, r.ESP.Number, err.Error())
		if efiPath != "" {
			r.bootloaderMissing("the EFI System Partition cannot be read")
		}
		return r
	}
	r.ESPFilesystem = fmt.Sprintf("FAT%d", fs.Type)
	if e, ok, err := fs.Lookup(removablePath); err == nil && ok && !e.Dir {
		r.RemovablePath = true
	}
	if efiPath != "" {
		e, ok, err := fs.Lookup(efiPath)
		switch {
		case err != nil:
			r.bootloaderMissing(err.Error())
		case !ok || e.Dir:
			r.bootloaderMissing("no such file in the EFI System Partition")
		default:
			r.BootloaderFound = true
		}
	} else if !r.RemovablePath {
		r.problem(job.WarnNoRemovablePath, removablePath)
	}
	return r
}
