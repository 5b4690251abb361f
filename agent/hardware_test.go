package agent

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/byoi/byoi/agentapi"
	"github.com/byoi/byoi/blockdev"
)

// The inventory carries each disk's controller driver, each NIC's driver
// and the controllers no driver claimed, and still validates.
func TestInventoryHardware(t *testing.T) {
	sys := t.TempDir()
	pci := func(slot, vendor, device, class, driver string) string {
		dir := filepath.Join(sys, "devices", "pci0000:00", slot)
		os.MkdirAll(dir, 0o755)
		for f, v := range map[string]string{"vendor": vendor, "device": device, "class": class} {
			os.WriteFile(filepath.Join(dir, f), []byte(v+"\n"), 0o644)
		}
		if driver != "" {
			os.Symlink("../../../bus/pci/drivers/"+driver, filepath.Join(dir, "driver"))
		}
		os.MkdirAll(filepath.Join(sys, "bus", "pci", "devices"), 0o755)
		os.Symlink(dir, filepath.Join(sys, "bus", "pci", "devices", slot))
		return dir
	}
	nic := pci("0000:00:02.0", "0x8086", "0x10d3", "0x020000", "e1000e")
	pci("0000:00:06.0", "0x8086", "0x1572", "0x020000", "")
	pci("0000:00:07.0", "0x1000", "0x0097", "0x010700", "")
	os.MkdirAll(filepath.Join(sys, "class", "net", "eth0"), 0o755)
	os.WriteFile(filepath.Join(sys, "class", "net", "eth0", "address"), []byte("52:54:00:AA:BB:01\n"), 0o644)
	os.Symlink(nic, filepath.Join(sys, "class", "net", "eth0", "device"))

	inv := agentapi.Inventory{BootMode: agentapi.BootModeLegacy, DiskGroups: []agentapi.DiskGroup{{DiskGroupID: 1, Description: "1 X Disk SAS 1199 GB, HW RAID (DELL PERC H730P Mini)", DiskType: "SAS", NumberOfDisks: 1}}}
	groups := []blockdev.Group{{ID: 1, Disks: []blockdev.Disk{{Name: "sda", Size: 1199 << 30, Model: "PERC H730P Mini", Driver: "megaraid_sas", Controller: "0000:03:00.0", RAIDController: "DELL PERC H730P Mini"}}}}
	addHardware(&inv, groups, sys, "")
	if err := inv.Validate(); err != nil {
		t.Fatal(err)
	}
	if len(inv.Disks) != 1 || inv.Disks[0].Driver != "megaraid_sas" || !inv.Disks[0].RAIDVolume || inv.Disks[0].DiskGroupID != 1 {
		t.Errorf("disks %+v", inv.Disks)
	}
	if len(inv.NICs) != 1 || inv.NICs[0] != (agentapi.InventoryNIC{Name: "eth0", MAC: "52:54:00:aa:bb:01", Driver: "e1000e", PCI: "8086:10d3"}) {
		t.Errorf("nics %+v", inv.NICs)
	}
	var msgs []string
	for _, u := range inv.Unclaimed {
		msgs = append(msgs, u.Message)
	}
	if got := strings.Join(msgs, "|"); got != "PCI 8086:1572 Ethernet controller: no driver in the rescue|PCI 1000:0097 Serial Attached SCSI controller: no driver in the rescue" {
		t.Errorf("unclaimed: %s", got)
	}
	bad := inv
	bad.Disks = []agentapi.InventoryDisk{{Name: "sda", DiskGroupID: 7}}
	if bad.Validate() == nil {
		t.Error("a disk in a group that does not exist validates")
	}
	bad = inv
	bad.Unclaimed = make([]agentapi.UnclaimedDevice, agentapi.MaxInventoryItems+1)
	if bad.Validate() == nil {
		t.Error("an unbounded list validates")
	}
}
