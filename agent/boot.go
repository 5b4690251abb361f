package agent

import (
	"bytes"
	"fmt"
	"io"
	"strings"

	"github.com/byoi/byoi/internal/fat"
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
	// BootloaderProblem says why BootloaderPath was not found (also in
	// Problems); empty when found or not asked.
	BootloaderProblem string `json:"-"`
}

func (r *BootReport) bootloaderMissing(format string, args ...any) {
	r.BootloaderProblem = fmt.Sprintf(format, args...)
	r.Problems = append(r.Problems, r.BootloaderProblem)
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
		r.Problems = append(r.Problems, "no boot code in the MBR: a legacy BIOS server cannot boot this image")
	}
	if r.ESP == nil {
		r.Problems = append(r.Problems, "no EFI System Partition: a UEFI server cannot boot this image")
		if efiPath != "" {
			r.bootloaderMissing("EFI bootloader %s not found: the image has no EFI System Partition", efiPath)
		}
		return r
	}
	fs, err := fat.Open(io.NewSectionReader(d, r.ESP.Start, r.ESP.Size), r.ESP.Size)
	if err != nil {
		r.Problems = append(r.Problems, fmt.Sprintf("EFI System Partition %d is not a readable FAT filesystem: %v", r.ESP.Number, err))
		if efiPath != "" {
			r.bootloaderMissing("EFI bootloader %s not found: the EFI System Partition cannot be read", efiPath)
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
			r.bootloaderMissing("EFI bootloader %s not found: %v", efiPath, err)
		case !ok || e.Dir:
			r.bootloaderMissing("EFI bootloader %s not found in the EFI System Partition", efiPath)
		default:
			r.BootloaderFound = true
		}
	} else if !r.RemovablePath {
		r.Problems = append(r.Problems, fmt.Sprintf("the EFI System Partition has no %s: UEFI firmware needs a boot entry (efiBootloaderPath)", removablePath))
	}
	return r
}
