package blockdev

import (
	"flag"
	"strconv"
	"strings"
	"testing"

	"github.com/byoi/byoi/blockdev/blockdevtest"
)

var update = flag.Bool("update", false, "rewrite the testdata/*.golden files")

// build builds a fake machine and returns a System reading it.
func build(t *testing.T, m blockdevtest.Machine, withDev bool) System {
	t.Helper()
	r := m.Build(t, withDev)
	return System{SysRoot: r.Sys, ProcRoot: r.Proc, DevRoot: r.Dev}
}

// rescueMounts is a rescue system's Mountinfo: everything in RAM.
const rescueMounts = `1 0 0:20 / / rw,relatime - tmpfs rootfs rw
22 1 0:21 / /proc rw,relatime - proc proc rw
23 1 0:22 / /sys rw,relatime - sysfs sysfs rw
24 1 0:6 / /dev rw,relatime - devtmpfs devtmpfs rw,size=12334524k
`

func sataPath(port int) string {
	n := strconv.Itoa(port)
	return "pci0000:00/0000:00:17.0/ata" + n + "/host" + n + "/target" + n + ":0:0/" + n + ":0:0:0"
}

func sasPath(n int) string {
	i := strconv.Itoa(n)
	return "pci0000:00/0000:00:03.0/0000:04:00.0/host1/port-1:" + i + "/end_device-1:" + i + "/target1:0:" + i + "/1:0:" + i + ":0"
}

// mixedServer: 2 NVMe 1.92 TB + 2 SATA HDD 4 TB, plus a USB stick, an
// optical drive, loop, dm, zram (swap) and an eMMC boot area.
var mixedServer = blockdevtest.Machine{
	Devs: []blockdevtest.Dev{
		{Name: "nvme1n1", Devpath: "pci0000:00/0000:00:01.2/0000:03:00.0/nvme/nvme1", DevNum: "259:2", Sectors: 3750748848,
			Model: "SAMSUNG MZQL21T9HCJR-00A07", Serial: "S64GNE0R600002", BlockWWID: "eui.36344730526000020025384500000001"},
		{Name: "nvme0n1", Devpath: "pci0000:00/0000:00:01.1/0000:02:00.0/nvme/nvme0", DevNum: "259:0", Sectors: 3750748848,
			Model: "SAMSUNG MZQL21T9HCJR-00A07", Serial: "S64GNE0R600001", BlockWWID: "eui.36344730526000010025384500000001",
			Parts: []blockdevtest.Part{{Name: "nvme0n1p1", DevNum: "259:1"}}},
		{Name: "sda", Devpath: sataPath(1), DevNum: "8:0", Sectors: 7814037168, PBS: 4096, Rot: true,
			Vendor: "ATA", Model: "HGST HUS726T4TAL", VPD80: "V6G0AAAA", Wwid: "naa.5000cca0bbcd0001"},
		{Name: "sdb", Devpath: sataPath(2), DevNum: "8:16", Sectors: 7814037168, PBS: 4096, Rot: true,
			Vendor: "ATA", Model: "HGST HUS726T4TAL", VPD80: "V6G0BBBB", Wwid: "naa.5000cca0bbcd0002"},
		{Name: "sdc", Devpath: "pci0000:00/0000:00:14.0/usb1/1-4/1-4:1.0/host6/target6:0:0/6:0:0:0", DevNum: "8:32",
			Sectors: 61341696, Removable: true, Vendor: "SanDisk", Model: "Cruzer Blade"},
		{Name: "sr0", Devpath: sataPath(3), DevNum: "11:0", Removable: true, Rot: true, Vendor: "HL-DT-ST", Model: "DVD-ROM DU90N"},
		{Name: "loop0", Devpath: "virtual", DevNum: "7:0", Sectors: 2097152},
		{Name: "loop1", Devpath: "virtual", DevNum: "7:1"},
		{Name: "dm-0", Devpath: "virtual", DevNum: "253:0", Sectors: 2097152, DMName: "vg0-lv0"},
		{Name: "zram0", Devpath: "virtual", DevNum: "252:0", Sectors: 8388608},
		{Name: "mmcblk0boot0", Devpath: "platform/mmc0/mmc0:0001", DevNum: "179:8", Sectors: 8192, Ro: true, Model: "DG4016"},
	},
	Mountinfo: rescueMounts,
	Swaps:     "/dev/zram0                              partition\t4194300\t\t0\t\t100\n",
}

// raidServer: a Dell PERC volume, two SATA SSDs and two SAS HDDs on an HBA.
var raidServer = blockdevtest.Machine{
	Devs: []blockdevtest.Dev{
		{Name: "sda", Devpath: "pci0000:00/0000:00:02.0/0000:03:00.0/host0/target0:2:0/0:2:0:0", DevNum: "8:0",
			Sectors: 2341795840, Rot: true, Vendor: "DELL", Model: "PERC H730P Mini",
			VPD80: "001c7a6b0f2b3f5e2a001c5b6d606694", Wwid: "naa.6d0946606d5b1c002a5e3f2b0f6b7a1c"},
		{Name: "sdb", Devpath: sataPath(1), DevNum: "8:16", Sectors: 937703088, PBS: 4096,
			Vendor: "ATA", Model: "INTEL SSDSC2KB480G8", VPD80: "PHYF0001480BGN", Wwid: "naa.55cd2e4150000001"},
		{Name: "sdc", Devpath: sataPath(2), DevNum: "8:32", Sectors: 937703088, PBS: 4096,
			Vendor: "ATA", Model: "INTEL SSDSC2KB480G8", VPD80: "PHYF0002480BGN", Wwid: "naa.55cd2e4150000002"},
		{Name: "sdd", Devpath: sasPath(0), DevNum: "8:48", Sectors: 2344225968, Rot: true,
			Vendor: "SEAGATE", Model: "ST1200MM0009", VPD80: "W3R0AAAA", Wwid: "naa.5000c500a0000001"},
		{Name: "sde", Devpath: sasPath(1), DevNum: "8:64", Sectors: 2344225968, Rot: true,
			Vendor: "SEAGATE", Model: "ST1200MM0009", VPD80: "W3R0BBBB", Wwid: "naa.5000c500a0000002"},
	},
	Mountinfo: rescueMounts,
	Drivers: map[string]string{
		"pci0000:00/0000:00:02.0/0000:03:00.0": "megaraid_sas", "pci0000:00/0000:00:17.0": "ahci",
		"pci0000:00/0000:00:03.0/0000:04:00.0": "mpt3sas",
	},
}

func sasDisk(name string, n int, parts ...blockdevtest.Part) blockdevtest.Dev {
	return blockdevtest.Dev{Name: name, Devpath: sasPath(n), DevNum: "8:" + strconv.Itoa(16*n), Sectors: 2344225968, Rot: true,
		Vendor: "SEAGATE", Model: "ST1200MM0009", VPD80: "W3R0000" + strconv.Itoa(n), Parts: parts}
}

// busyServer: eight equal SAS disks, used in every way the running system
// can use a disk. Root is LVM (dm-1) on md0 (RAID1 of sde2 and sdf2).
var busyServer = blockdevtest.Machine{
	Devs: []blockdevtest.Dev{
		sasDisk("sda", 0, blockdevtest.Part{Name: "sda1", DevNum: "8:1"}),
		sasDisk("sdb", 1, blockdevtest.Part{Name: "sdb1", DevNum: "8:17"}, blockdevtest.Part{Name: "sdb2", DevNum: "8:18"}),
		func() blockdevtest.Dev { d := sasDisk("sdc", 2); d.Holders = []string{"dm-0"}; return d }(),
		sasDisk("sdd", 3),
		sasDisk("sde", 4, blockdevtest.Part{Name: "sde1", DevNum: "8:65"}, blockdevtest.Part{Name: "sde2", DevNum: "8:66", Holders: []string{"md0"}}),
		sasDisk("sdf", 5, blockdevtest.Part{Name: "sdf1", DevNum: "8:81"}, blockdevtest.Part{Name: "sdf2", DevNum: "8:82", Holders: []string{"md0"}}),
		sasDisk("sdg", 6, blockdevtest.Part{Name: "sdg1", DevNum: "8:97"}),
		sasDisk("sdh", 7),
		{Name: "dm-0", Devpath: "virtual", DevNum: "253:0", Sectors: 2344225968, DMName: "vg0-lv0", Slaves: []string{"sdc"}},
		{Name: "md0", Devpath: "virtual", DevNum: "9:0", Sectors: 2000000, MDLevel: "raid1", Slaves: []string{"sde2", "sdf2"}, Holders: []string{"dm-1"}},
		{Name: "dm-1", Devpath: "virtual", DevNum: "253:1", Sectors: 2000000, DMName: "vg1-root", Slaves: []string{"md0"}},
	},
	Mountinfo: strings.Join([]string{
		`27 1 253:1 / / rw,relatime shared:1 - ext4 /dev/mapper/vg1-root rw`,
		`22 27 0:21 / /proc rw,relatime shared:2 - proc proc rw`,
		`40 27 8:1 / /srv/my\040data rw,relatime shared:3 - ext4 /dev/sda1 rw`,
		`41 27 253:0 / /var/lib/data rw,relatime - xfs /dev/mapper/vg0-lv0 rw`,
		`42 27 0:45 /@home /home rw,relatime shared:5 - btrfs /dev/sdg1 rw,space_cache=v2`,
		`43 27 8:112 / /mnt/whole rw,relatime - ext4 /dev/sdh rw`,
	}, "\n") + "\n",
	Swaps: "/dev/sdb2                               partition\t8388604\t\t0\t\t-2\n",
}
