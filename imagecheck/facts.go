package imagecheck

import (
	"strings"

	"github.com/byoi/byoi/agentapi"
)

// InventoryFacts returns the facts the agent's inventory gives of the
// server (agentapi.Inventory, as the agent posts it and `byoi inspect
// --inventory FILE` reads it), for the disk that receives the image: the
// disk named disk ("nvme0n1" or "/dev/nvme0n1"), or, when disk is "", the
// first disk of disk group diskGroup (0 means 1), which is the one a
// deploy writes (blockdev.Group: Disks[0] receives the image).
//
//   - BootMode is the inventory's bootMode;
//   - DiskDrivers is that disk's controller driver (inventory.disks[].driver;
//     none when the disk is not listed or its driver is unknown: the driver
//     checks are then skipped);
//   - NICs are inventory.nics (name, MAC, driver), or, from an agent that
//     sends only macs, one NIC per MAC without a driver.
//
// ConfigDrive and EFIBootloaderPath come from the job: the caller sets
// them on the result.
func InventoryFacts(inv *agentapi.Inventory, disk string, diskGroup int) Facts {
	if inv == nil {
		return Facts{}
	}
	f := Facts{BootMode: inv.BootMode}
	if diskGroup <= 0 {
		diskGroup = 1
	}
	disk = strings.TrimPrefix(disk, "/dev/")
	for _, d := range inv.Disks {
		if disk != "" && d.Name != disk || disk == "" && d.DiskGroupID != diskGroup {
			continue
		}
		if d.Driver != "" {
			f.DiskDrivers = []string{d.Driver}
		}
		break
	}
	for _, n := range inv.NICs {
		f.NICs = append(f.NICs, NIC{Name: n.Name, MAC: n.MAC, Driver: n.Driver})
	}
	if len(inv.NICs) == 0 {
		for _, m := range inv.MACs {
			f.NICs = append(f.NICs, NIC{MAC: m})
		}
	}
	return f
}
