package blockdev

import (
	"testing"

	"github.com/byoi/byoi/blockdev/blockdevtest"
)

// A disk is a RAID volume when its controller's driver says so (the SCSI
// channel it puts the disk on, or the device's raid_level), never because
// of its model name; raidController names the volume as the controller
// reports it, or the driver.
func TestRAIDVolumeByDriverNotByModel(t *testing.T) {
	scsi := func(name, hba, addr, vendor, model string, attrs map[string]string) blockdevtest.Dev {
		return blockdevtest.Dev{Name: name, Devpath: "pci0000:00/" + hba + "/host0/target" + addr[:len(addr)-2] + "/" + addr,
			DevNum: "8:0", Sectors: 2341795840, Rot: true, Vendor: vendor, Model: model, Attrs: attrs}
	}
	m := blockdevtest.Machine{
		Devs: []blockdevtest.Dev{
			scsi("sda", "0000:01:00.0", "0:2:0:0", "", "", nil),                    // MegaRAID logical drive, nameless
			scsi("sdb", "0000:01:00.0", "0:0:4:0", "SEAGATE", "ST1200MM0009", nil), // MegaRAID JBOD
			scsi("sdc", "0000:02:00.0", "1:0:0:0", "DELL", "PERC H730P Mini", nil), // behind an HBA: a disk
			scsi("sdd", "0000:02:00.0", "1:1:0:0", "LSI", "Logical Volume", nil),   // an IR volume of mpt3sas
			scsi("sde", "0000:03:00.0", "2:1:0:0", "HPE", "LOGICAL VOLUME", map[string]string{"raid_level": "RAID 1(+0)"}),
			scsi("sdf", "0000:03:00.0", "2:0:1:0", "HPE", "MO001200JWFWR", map[string]string{"raid_level": "N/A"}),
			scsi("sdg", "0000:00:17.0", "3:0:0:0", "ATA", "RAID EDITION 4TB", nil), // ahci
			scsi("sdh", "0000:04:00.0", "4:0:0:0", "AVAGO", "MR9361-8i", nil),      // no driver bound
		},
		Drivers: map[string]string{"pci0000:00/0000:01:00.0": "megaraid_sas", "pci0000:00/0000:02:00.0": "mpt3sas",
			"pci0000:00/0000:03:00.0": "smartpqi", "pci0000:00/0000:00:17.0": "ahci"},
	}
	s := build(t, m, false)
	disks, err := s.Disks(ScanOptions{All: true})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string][2]string{ // name → driver, raidController
		"sda": {"megaraid_sas", "megaraid_sas"}, "sdb": {"megaraid_sas", ""}, "sdc": {"mpt3sas", ""},
		"sdd": {"mpt3sas", "LSI Logical Volume"}, "sde": {"smartpqi", "HPE LOGICAL VOLUME"}, "sdf": {"smartpqi", ""},
		"sdg": {"ahci", ""}, "sdh": {"", ""},
	}
	if len(disks) != len(want) {
		t.Fatalf("%d disks: %+v", len(disks), disks)
	}
	for _, d := range disks {
		w := want[d.Name]
		if d.Driver != w[0] || d.RAIDController != w[1] {
			t.Errorf("%s: driver %q raidController %q, want %q %q", d.Name, d.Driver, d.RAIDController, w[0], w[1])
		}
	}
	for _, g := range MakeGroups(disks) {
		if g.RAIDController == "" && len(g.Disks) == 1 && g.Disks[0].Name == "sda" {
			t.Errorf("the MegaRAID volume is in a JBOD group: %+v", g)
		}
	}
}
