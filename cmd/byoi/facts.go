package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"strings"

	"github.com/byoi/byoi/agentapi"
	"github.com/byoi/byoi/imagecheck"
)

// factFlags are the server's facts for the image checks (issue 26), as
// `byoi inspect` and `byoi deploy` take them: --inventory FILE (the
// agent's inventory JSON), and --boot-mode, --disk-driver, --nic-driver
// over it.
type factFlags struct {
	bootMode   string
	diskDriver stringList
	nicDriver  stringList
	inventory  string
}

func (f *factFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.bootMode, "boot-mode", "", "how the server boots, uefi or legacy: the image must boot that way")
	fs.Var(&f.diskDriver, "disk-driver", "kernel `module` of the target disk's controller (nvme, ahci, megaraid_sas...): the image's initramfs must have it (repeatable)")
	fs.Var(&f.nicDriver, "nic-driver", "kernel `module` of a network interface, or MAC=module (repeatable): the image must have it")
	fs.StringVar(&f.inventory, "inventory", "", "the agent's inventory JSON `file` (bootMode, disks' and NICs' drivers); the flags above override it")
}

// given tells whether any fact was given.
func (f *factFlags) given() bool {
	return f.bootMode != "" || len(f.diskDriver) > 0 || len(f.nicDriver) > 0 || f.inventory != ""
}

// facts reads the inventory (nil when none) and the flags' facts (nil
// when no flag was given).
func (f *factFlags) facts() (*agentapi.Inventory, *imagecheck.Facts, error) {
	var inv *agentapi.Inventory
	if f.inventory != "" {
		b, err := readLimited(f.inventory, 4<<20)
		if err != nil {
			return nil, nil, fmt.Errorf("--inventory: %w", err)
		}
		inv = &agentapi.Inventory{}
		if err := json.Unmarshal(b, inv); err != nil {
			return nil, nil, usagef("--inventory %s is not an inventory JSON: %v", f.inventory, err)
		}
	}
	if f.bootMode == "" && len(f.diskDriver) == 0 && len(f.nicDriver) == 0 {
		return inv, nil, nil
	}
	var out imagecheck.Facts
	switch f.bootMode {
	case "", imagecheck.BootUEFI, imagecheck.BootLegacy:
		out.BootMode = f.bootMode
	case "bios":
		out.BootMode = imagecheck.BootLegacy
	default:
		return nil, nil, usagef("--boot-mode must be uefi or legacy, got %q", f.bootMode)
	}
	for _, d := range f.diskDriver {
		for _, m := range strings.Split(d, ",") {
			if m = strings.TrimSpace(m); m != "" {
				out.DiskDrivers = append(out.DiskDrivers, m)
			}
		}
	}
	for _, n := range f.nicDriver {
		nic := imagecheck.NIC{Driver: n}
		if mac, drv, ok := strings.Cut(n, "="); ok {
			nic = imagecheck.NIC{MAC: strings.ToLower(mac), Driver: drv}
		}
		if nic.Driver == "" {
			return nil, nil, usagef("--nic-driver wants a module or MAC=module, got %q", n)
		}
		out.NICs = append(out.NICs, nic)
	}
	return inv, &out, nil
}

// merged is the facts for a disk of the inventory (disk "" : the first of
// group 1) with the flags' over them.
func merged(inv *agentapi.Inventory, fl *imagecheck.Facts, disk string, group int) imagecheck.Facts {
	f := imagecheck.InventoryFacts(inv, disk, group)
	if fl != nil {
		if fl.BootMode != "" {
			f.BootMode = fl.BootMode
		}
		if len(fl.DiskDrivers) > 0 {
			f.DiskDrivers = fl.DiskDrivers
		}
		if len(fl.NICs) > 0 {
			f.NICs = fl.NICs
		}
	}
	return f
}
