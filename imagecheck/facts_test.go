package imagecheck

import (
	"encoding/json"
	"reflect"
	"testing"

	"github.com/byoi/byoi/agentapi"
	"github.com/byoi/byoi/job"
)

// inventoryJSON is an inventory as the agent posts it: two disk groups
// (NVMe, then a MegaRAID volume), two NICs.
const inventoryJSON = `{"bootMode":"uefi","diskGroups":[
 {"diskGroupId":1,"description":"2 x 960 GB NVME","diskSize":{"unit":"GB","value":960},"diskType":"NVME","numberOfDisks":2,"raidController":null},
 {"diskGroupId":2,"description":"1 x 4000 GB SAS","diskSize":{"unit":"GB","value":4000},"diskType":"SAS","numberOfDisks":1,"raidController":"DELL PERC H730P Mini"}],
 "macs":["52:54:00:12:34:56","52:54:00:12:34:57"],
 "disks":[{"name":"nvme0n1","diskGroupId":1,"size":960197124096,"driver":"nvme","controller":"0000:01:00.0"},
  {"name":"nvme1n1","diskGroupId":1,"size":960197124096,"driver":"nvme","controller":"0000:02:00.0"},
  {"name":"sda","diskGroupId":2,"size":3999688294400,"driver":"megaraid_sas","controller":"0000:03:00.0","raidVolume":true}],
 "nics":[{"name":"eno1","mac":"52:54:00:12:34:56","driver":"e1000e","pci":"8086:15bb"},
  {"name":"enp4s0f0","mac":"52:54:00:12:34:57","driver":"ixgbe","pci":"8086:10fb"}]}`

func TestInventoryFacts(t *testing.T) {
	var inv agentapi.Inventory
	if err := json.Unmarshal([]byte(inventoryJSON), &inv); err != nil {
		t.Fatal(err)
	}
	if err := inv.Validate(); err != nil {
		t.Fatal(err)
	}
	nics := []NIC{{Name: "eno1", MAC: "52:54:00:12:34:56", Driver: "e1000e"}, {Name: "enp4s0f0", MAC: "52:54:00:12:34:57", Driver: "ixgbe"}}
	for _, tc := range []struct {
		disk  string
		group int
		want  []string
	}{
		{"", 0, []string{"nvme"}}, {"", 1, []string{"nvme"}}, {"", 2, []string{"megaraid_sas"}},
		{"/dev/sda", 1, []string{"megaraid_sas"}}, {"sda", 0, []string{"megaraid_sas"}},
		{"sdz", 0, nil}, {"", 3, nil},
	} {
		f := InventoryFacts(&inv, tc.disk, tc.group)
		if f.BootMode != BootUEFI || !reflect.DeepEqual(f.DiskDrivers, tc.want) || !reflect.DeepEqual(f.NICs, nics) {
			t.Errorf("disk %q group %d: %+v", tc.disk, tc.group, f)
		}
	}
	// An agent that sends only macs.
	old := agentapi.Inventory{BootMode: "legacy", MACs: []string{"52:54:00:12:34:56"}}
	if f := InventoryFacts(&old, "", 0); f.BootMode != BootLegacy || f.DiskDrivers != nil || !reflect.DeepEqual(f.NICs, []NIC{{MAC: "52:54:00:12:34:56"}}) {
		t.Errorf("macs only: %+v", f)
	}
	if f := InventoryFacts(nil, "", 0); !reflect.DeepEqual(f, Facts{}) {
		t.Errorf("nil: %+v", f)
	}
}

// TestInventoryChecks: the facts of an inventory, checked against the
// Debian-like image: its initramfs has nvme but not megaraid_sas, which
// its kernel does not know at all (a warning, not a refusal: a driver's
// name may not be its module's), and the kernel has no ixgbe.
func TestInventoryChecks(t *testing.T) {
	var inv agentapi.Inventory
	if err := json.Unmarshal([]byte(inventoryJSON), &inv); err != nil {
		t.Fatal(err)
	}
	img := build(t, defaultDebian(), layout{})
	f := InventoryFacts(&inv, "", 1)
	f.ConfigDrive = true
	want(t, check(t, img, f), map[job.Code]Severity{job.CheckNICDriverAbsent: Warn})
	want(t, check(t, img, InventoryFacts(&inv, "", 2)), map[job.Code]Severity{job.CheckDiskDriverAbsent: Warn, job.CheckNICDriverAbsent: Warn})
}
