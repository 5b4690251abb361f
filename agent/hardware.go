package agent

import (
	"os"
	"path/filepath"
	"strings"

	"github.com/byoi/byoi/agentapi"
	"github.com/byoi/byoi/blockdev"
	"github.com/byoi/byoi/drivers"
)

// addHardware adds to an inventory what OVH's shape has no place for:
// each disk of the groups with its controller's driver, each NIC with its
// driver, and the network and storage controllers no driver claimed (the
// module index of the running kernel names the module that would match,
// when it is there).
func addHardware(inv *agentapi.Inventory, groups []blockdev.Group, sysRoot, modDir string) {
	for _, g := range groups {
		for _, d := range g.Disks {
			if len(inv.Disks) == agentapi.MaxInventoryItems {
				break
			}
			inv.Disks = append(inv.Disks, agentapi.InventoryDisk{Name: d.Name, DiskGroupID: g.ID, Model: d.Model, Size: d.Size,
				Driver: d.Driver, Controller: d.Controller, RAIDVolume: d.RAIDController != ""})
		}
	}
	if nics, err := drivers.NICs(sysRoot); err == nil {
		for _, n := range nics {
			if len(inv.NICs) == agentapi.MaxInventoryItems {
				break
			}
			mac, _ := agentapi.NormalizeMAC(n.MAC)
			inv.NICs = append(inv.NICs, agentapi.InventoryNIC{Name: n.Name, MAC: mac, Driver: n.Driver, PCI: n.PCI})
		}
	}
	var al *drivers.Aliases
	if modDir != "" {
		al, _, _ = drivers.Index(modDir)
	}
	if un, err := drivers.FindUnclaimed(sysRoot, al); err == nil {
		for _, u := range un {
			if len(inv.Unclaimed) == agentapi.MaxInventoryItems {
				break
			}
			inv.Unclaimed = append(inv.Unclaimed, agentapi.UnclaimedDevice{Slot: u.Slot, ID: u.ID(), Class: u.ClassName(), Message: u.Message()})
		}
	}
}

// kernelModDir is the running kernel's module directory, when sysRoot is
// the real /sys ("" for a fake tree: tests have no module index).
func kernelModDir(sysRoot string) string {
	if sysRoot != "/sys" {
		return ""
	}
	rel, err := os.ReadFile("/proc/sys/kernel/osrelease")
	if err != nil {
		return ""
	}
	return filepath.Join("/lib/modules", strings.TrimSpace(string(rel)))
}
