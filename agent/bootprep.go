package agent

import (
	"encoding/hex"
	"fmt"
	"os"
	"strings"

	"github.com/byoi/byoi/agentapi"
	"github.com/byoi/byoi/efiboot"
	"github.com/byoi/byoi/job"
	"github.com/byoi/byoi/partition"
)

// efiDescription names byoi's UEFI boot entries (efiboot.Install replaces
// an earlier deployment's entry of that name).
const efiDescription = "byoi deployed image"

// defaultLoader is where UEFI firmware looks without a boot entry (UEFI
// 2.10 section 3.5.1.1, x86-64): the entry for it still puts the deployed
// disk right after the network in the boot order.
const defaultLoader = `\EFI\BOOT\BOOTX64.EFI`

// efiVarsDir is the efivarfs to write the boot entry into: env's, else
// the kernel's when the machine booted by UEFI and really reboots
// (SystemRebooter: tests and --no-reboot never touch the firmware's
// variables), else "" (none).
func (env *Env) efiVarsDir() string {
	switch env.EFIVarsDir {
	case "-":
		return ""
	case "":
		if _, real := env.Rebooter.(SystemRebooter); !real {
			return ""
		}
		if _, err := os.Stat(efiboot.DefaultDir); err == nil {
			return efiboot.DefaultDir
		}
		return ""
	}
	return env.EFIVarsDir
}

// prepareBoot makes the deployed disk the one the machine boots after the
// network: under UEFI it writes a boot entry for efiBootloaderPath (or the
// default loader path) on the disk's EFI System Partition, placed right
// after the network entry the rescue system came from (efiboot.Install);
// under either firmware it returns the disk's key for the control plane's
// BIOS boot selector. A failure to write the entry is a warning: the
// firmware's default path may still boot the disk.
func prepareBoot(env *Env, d *Deployer, j *job.Job, res *Result) agentapi.BootInfo {
	info := agentapi.BootInfo{DiskKey: diskKey(res)}
	dir := env.efiVarsDir()
	if dir == "" || res.Table == nil {
		return info
	}
	loader := j.EFIBootloaderPath
	if loader == "" && res.Boot != nil && res.Boot.BootloaderFound {
		loader = res.Boot.BootloaderPath // the server's, found on the disk (bootCheck)
	}
	if loader == "" {
		loader = defaultLoader
	}
	var esp *partition.Partition
	if res.Boot != nil && res.Boot.ESP != nil {
		esp = res.Boot.ESP
	}
	if esp == nil || res.Table.Type != "gpt" {
		d.warn(res, job.StepFinish, job.WarnNoBootEntry, "the disk has no GPT EFI System Partition")
		return info
	}
	ss := res.Table.SectorSize
	inst, err := efiboot.Install(dir, efiboot.Entry{
		Description: efiDescription,
		Partition:   efiboot.Partition{Number: uint32(esp.Number), GUID: esp.GUID, StartLBA: uint64(esp.Start / ss), SizeLBA: uint64(esp.Size / ss)},
		LoaderPath:  loader,
	})
	if err != nil {
		d.warn(res, job.StepFinish, job.WarnNoBootEntry, err.Error())
		return info
	}
	info.EFIEntry = fmt.Sprintf("%s %s", efiboot.BootName(inst.Num), loader)
	d.logger().Info("UEFI boot entry written", "entry", info.EFIEntry, "bootOrder", inst.BootOrder)
	return info
}

// diskKey identifies the deployed disk for the BIOS boot selector: the GPT
// disk GUID or the MBR disk signature, in on-disk byte order.
func diskKey(res *Result) string {
	if res.Table == nil {
		return ""
	}
	switch res.Table.Type {
	case "gpt":
		if b, ok := guidOnDisk(res.Table.DiskGUID); ok {
			return "gpt:" + hex.EncodeToString(b)
		}
	case "mbr":
		if s := res.Table.DiskSignature; s != 0 {
			b := []byte{byte(s), byte(s >> 8), byte(s >> 16), byte(s >> 24)}
			return "mbr:" + hex.EncodeToString(b)
		}
	}
	return ""
}

// guidOnDisk turns a GUID's text form into its 16 bytes as a GPT stores
// them: the first three groups little-endian, the rest in order (UEFI 2.10
// appendix A).
func guidOnDisk(s string) ([]byte, bool) {
	h, err := hex.DecodeString(strings.ReplaceAll(s, "-", ""))
	if err != nil || len(h) != 16 {
		return nil, false
	}
	return []byte{h[3], h[2], h[1], h[0], h[5], h[4], h[7], h[6], h[8], h[9], h[10], h[11], h[12], h[13], h[14], h[15]}, true
}
