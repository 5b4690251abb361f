package controlplane_test

import (
	"encoding/json"
	"testing"

	"github.com/byoi/byoi/agentapi"
)

// hardwareDetail is the body of bringYourOwnImage/hardware.
type hardwareDetail struct {
	Disks     []agentapi.InventoryDisk   `json:"disks"`
	NICs      []agentapi.InventoryNIC    `json:"nics"`
	Unclaimed []agentapi.UnclaimedDevice `json:"unclaimedDevices"`
}

// The inventory's additions (drivers, unclaimed devices) are shown at
// bringYourOwnImage/hardware; specifications/hardware keeps OVH's shape.
func TestHardwareDetailBesideOVHShape(t *testing.T) {
	e := newEnv(t)
	cu := e.customer("acme")
	a := e.server("ns1.example", "acme")
	c := cu.signed
	var empty hardwareDetail
	if err := c.Get(path(a.server, "/bringYourOwnImage/hardware"), &empty); err != nil || empty.Disks == nil || len(empty.Unclaimed) != 0 {
		t.Fatalf("before the inventory: %+v %v", empty, err)
	}
	withHW := inv
	withHW.Disks = []agentapi.InventoryDisk{{Name: "nvme0n1", DiskGroupID: 1, Size: 1920e9, Driver: "nvme", Controller: "0000:01:00.0"}}
	withHW.NICs = []agentapi.InventoryNIC{{Name: "eth0", MAC: "52:54:00:12:34:56", Driver: "ixgbe", PCI: "8086:10fb"}}
	withHW.Unclaimed = []agentapi.UnclaimedDevice{{Slot: "0000:03:00.0", ID: "8086:1572", Class: "Ethernet controller", Message: "PCI 8086:1572 Ethernet controller: no driver in the rescue"}}
	a.inventory(withHW)
	var got hardwareDetail
	if err := c.Get(path(a.server, "/bringYourOwnImage/hardware"), &got); err != nil {
		t.Fatal(err)
	}
	if len(got.Unclaimed) != 1 || got.Unclaimed[0].Message != "PCI 8086:1572 Ethernet controller: no driver in the rescue" || got.NICs[0].Driver != "ixgbe" || got.Disks[0].Driver != "nvme" {
		t.Errorf("hardware detail: %+v", got)
	}
	var hw map[string]json.RawMessage
	if err := c.Get(path(a.server, "/specifications/hardware"), &hw); err != nil {
		t.Fatal(err)
	}
	// OVH's HardwareSpecifications fields (issue 24: the ones the
	// inventory does not tell are null), none of byoi's additions.
	if hw["bootMode"] == nil || hw["diskGroups"] == nil || hw["disks"] != nil || hw["nics"] != nil || hw["unclaimedDevices"] != nil {
		t.Errorf("specifications/hardware is not OVH's shape: %v", hw)
	}
}
