package blockdev

import (
	"flag"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the testdata/*.golden files")

// fakeDev describes one /sys/block entry of a fake sysfs tree. The trees
// are built by the tests into t.TempDir() (see testdata/README.md) with the
// real layout: /sys/block/<name> is a relative symlink to
// /sys/devices/<devpath>/block/<name>, whose "device" symlink points at the
// device directory carrying model, vendor, serial, wwid and vpd_pg80.
type fakeDev struct {
	name                        string
	devpath                     string // under /sys/devices; "virtual" for virtual devices
	dev                         string // major:minor
	sectors                     int64  // 512-byte units
	lbs                         int64
	pbs                         int64
	rot                         bool
	removable, ro               bool
	model, vendor, serial, wwid string
	vpd80                       string // serial in a binary VPD page 0x80
	blockSerial                 string // /sys/block/<d>/serial (virtio)
	blockWWID                   string // /sys/block/<d>/wwid (nvme)
	parts                       []fakePart
	holders, slaves             []string
	dmName, mdLevel             string
	content                     []byte // of DevRoot/<name>
}

type fakePart struct {
	name, dev string
	holders   []string
	content   []byte
}

type fakeSystem struct {
	devs      []fakeDev
	mountinfo string
	swaps     string
}

func write(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func symlink(t *testing.T, target, path string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(target, path); err != nil {
		t.Fatal(err)
	}
}

// build writes the fake tree and returns a System reading it. DevRoot is
// left at its default (/dev) so golden output shows real-looking paths;
// withDev also creates DevRoot files (for InUseByPath and config-2 probes).
func (f fakeSystem) build(t *testing.T, withDev bool) System {
	t.Helper()
	root := t.TempDir()
	sys := filepath.Join(root, "sys")
	if err := os.MkdirAll(filepath.Join(sys, "block"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, d := range f.devs {
		devdir := filepath.Join("devices", d.devpath)
		bdir := filepath.Join(devdir, "block", d.name)
		symlink(t, filepath.Join("..", bdir), filepath.Join(sys, "block", d.name))
		b := filepath.Join(sys, bdir)
		write(t, filepath.Join(b, "dev"), d.dev+"\n")
		write(t, filepath.Join(b, "size"), strconv.FormatInt(d.sectors, 10)+"\n")
		lbs, pbs := d.lbs, d.pbs
		if lbs == 0 {
			lbs = 512
		}
		if pbs == 0 {
			pbs = lbs
		}
		write(t, filepath.Join(b, "queue", "logical_block_size"), strconv.FormatInt(lbs, 10)+"\n")
		write(t, filepath.Join(b, "queue", "physical_block_size"), strconv.FormatInt(pbs, 10)+"\n")
		write(t, filepath.Join(b, "queue", "rotational"), map[bool]string{true: "1\n", false: "0\n"}[d.rot])
		write(t, filepath.Join(b, "removable"), map[bool]string{true: "1\n", false: "0\n"}[d.removable])
		write(t, filepath.Join(b, "ro"), map[bool]string{true: "1\n", false: "0\n"}[d.ro])
		if err := os.MkdirAll(filepath.Join(b, "holders"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(filepath.Join(b, "slaves"), 0o755); err != nil {
			t.Fatal(err)
		}
		for _, h := range d.holders {
			symlink(t, "../../"+h, filepath.Join(b, "holders", h))
		}
		for _, s := range d.slaves {
			symlink(t, "../../"+s, filepath.Join(b, "slaves", s))
		}
		if d.dmName != "" {
			write(t, filepath.Join(b, "dm", "name"), d.dmName+"\n")
		}
		if d.mdLevel != "" {
			write(t, filepath.Join(b, "md", "level"), d.mdLevel+"\n")
		}
		if d.blockSerial != "" {
			write(t, filepath.Join(b, "serial"), d.blockSerial)
		}
		if d.blockWWID != "" {
			write(t, filepath.Join(b, "wwid"), d.blockWWID+"\n")
		}
		if d.devpath != "virtual" {
			symlink(t, "../..", filepath.Join(b, "device"))
			dd := filepath.Join(sys, devdir)
			for file, v := range map[string]string{"model": d.model, "vendor": d.vendor, "serial": d.serial, "wwid": d.wwid} {
				if v != "" {
					// SCSI pads model and vendor with spaces.
					write(t, filepath.Join(dd, file), v+"   \n")
				}
			}
			if d.vpd80 != "" {
				page := append([]byte{0, 0x80, 0, byte(len(d.vpd80))}, d.vpd80...)
				write(t, filepath.Join(dd, "vpd_pg80"), string(page))
			}
		}
		for i, p := range d.parts {
			pd := filepath.Join(b, p.name)
			write(t, filepath.Join(pd, "dev"), p.dev+"\n")
			write(t, filepath.Join(pd, "partition"), strconv.Itoa(i+1)+"\n")
			write(t, filepath.Join(pd, "size"), "2048\n")
			if err := os.MkdirAll(filepath.Join(pd, "holders"), 0o755); err != nil {
				t.Fatal(err)
			}
			for _, h := range p.holders {
				symlink(t, "../../../../"+h, filepath.Join(pd, "holders", h))
			}
		}
	}
	write(t, filepath.Join(root, "proc", "self", "mountinfo"), f.mountinfo)
	swaps := "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n" + f.swaps
	write(t, filepath.Join(root, "proc", "swaps"), swaps)
	s := System{SysRoot: sys, ProcRoot: filepath.Join(root, "proc")}
	if withDev {
		s.DevRoot = filepath.Join(root, "dev")
		for _, d := range f.devs {
			write(t, filepath.Join(s.DevRoot, d.name), string(d.content))
			for _, p := range d.parts {
				write(t, filepath.Join(s.DevRoot, p.name), string(p.content))
			}
		}
		symlink(t, "../dm-0", filepath.Join(s.DevRoot, "mapper", "vg0-lv0"))
	}
	return s
}

// rescueMounts is a rescue system's mountinfo: everything in RAM.
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
var mixedServer = fakeSystem{
	devs: []fakeDev{
		{name: "nvme1n1", devpath: "pci0000:00/0000:00:01.2/0000:03:00.0/nvme/nvme1", dev: "259:2", sectors: 3750748848,
			model: "SAMSUNG MZQL21T9HCJR-00A07", serial: "S64GNE0R600002", blockWWID: "eui.36344730526000020025384500000001"},
		{name: "nvme0n1", devpath: "pci0000:00/0000:00:01.1/0000:02:00.0/nvme/nvme0", dev: "259:0", sectors: 3750748848,
			model: "SAMSUNG MZQL21T9HCJR-00A07", serial: "S64GNE0R600001", blockWWID: "eui.36344730526000010025384500000001",
			parts: []fakePart{{name: "nvme0n1p1", dev: "259:1"}}},
		{name: "sda", devpath: sataPath(1), dev: "8:0", sectors: 7814037168, pbs: 4096, rot: true,
			vendor: "ATA", model: "HGST HUS726T4TAL", vpd80: "V6G0AAAA", wwid: "naa.5000cca0bbcd0001"},
		{name: "sdb", devpath: sataPath(2), dev: "8:16", sectors: 7814037168, pbs: 4096, rot: true,
			vendor: "ATA", model: "HGST HUS726T4TAL", vpd80: "V6G0BBBB", wwid: "naa.5000cca0bbcd0002"},
		{name: "sdc", devpath: "pci0000:00/0000:00:14.0/usb1/1-4/1-4:1.0/host6/target6:0:0/6:0:0:0", dev: "8:32",
			sectors: 61341696, removable: true, vendor: "SanDisk", model: "Cruzer Blade"},
		{name: "sr0", devpath: sataPath(3), dev: "11:0", removable: true, rot: true, vendor: "HL-DT-ST", model: "DVD-ROM DU90N"},
		{name: "loop0", devpath: "virtual", dev: "7:0", sectors: 2097152},
		{name: "loop1", devpath: "virtual", dev: "7:1"},
		{name: "dm-0", devpath: "virtual", dev: "253:0", sectors: 2097152, dmName: "vg0-lv0"},
		{name: "zram0", devpath: "virtual", dev: "252:0", sectors: 8388608},
		{name: "mmcblk0boot0", devpath: "platform/mmc0/mmc0:0001", dev: "179:8", sectors: 8192, ro: true, model: "DG4016"},
	},
	mountinfo: rescueMounts,
	swaps:     "/dev/zram0                              partition\t4194300\t\t0\t\t100\n",
}

// raidServer: a Dell PERC volume, two SATA SSDs and two SAS HDDs on an HBA.
var raidServer = fakeSystem{
	devs: []fakeDev{
		{name: "sda", devpath: "pci0000:00/0000:00:02.0/0000:03:00.0/host0/target0:2:0/0:2:0:0", dev: "8:0",
			sectors: 2341795840, rot: true, vendor: "DELL", model: "PERC H730P Mini",
			vpd80: "001c7a6b0f2b3f5e2a001c5b6d606694", wwid: "naa.6d0946606d5b1c002a5e3f2b0f6b7a1c"},
		{name: "sdb", devpath: sataPath(1), dev: "8:16", sectors: 937703088, pbs: 4096,
			vendor: "ATA", model: "INTEL SSDSC2KB480G8", vpd80: "PHYF0001480BGN", wwid: "naa.55cd2e4150000001"},
		{name: "sdc", devpath: sataPath(2), dev: "8:32", sectors: 937703088, pbs: 4096,
			vendor: "ATA", model: "INTEL SSDSC2KB480G8", vpd80: "PHYF0002480BGN", wwid: "naa.55cd2e4150000002"},
		{name: "sdd", devpath: sasPath(0), dev: "8:48", sectors: 2344225968, rot: true,
			vendor: "SEAGATE", model: "ST1200MM0009", vpd80: "W3R0AAAA", wwid: "naa.5000c500a0000001"},
		{name: "sde", devpath: sasPath(1), dev: "8:64", sectors: 2344225968, rot: true,
			vendor: "SEAGATE", model: "ST1200MM0009", vpd80: "W3R0BBBB", wwid: "naa.5000c500a0000002"},
	},
	mountinfo: rescueMounts,
}

func sasDisk(name string, n int, parts ...fakePart) fakeDev {
	return fakeDev{name: name, devpath: sasPath(n), dev: "8:" + strconv.Itoa(16*n), sectors: 2344225968, rot: true,
		vendor: "SEAGATE", model: "ST1200MM0009", vpd80: "W3R0000" + strconv.Itoa(n), parts: parts}
}

// busyServer: eight equal SAS disks, used in every way the running system
// can use a disk. Root is LVM (dm-1) on md0 (RAID1 of sde2 and sdf2).
var busyServer = fakeSystem{
	devs: []fakeDev{
		sasDisk("sda", 0, fakePart{name: "sda1", dev: "8:1"}),
		sasDisk("sdb", 1, fakePart{name: "sdb1", dev: "8:17"}, fakePart{name: "sdb2", dev: "8:18"}),
		func() fakeDev { d := sasDisk("sdc", 2); d.holders = []string{"dm-0"}; return d }(),
		sasDisk("sdd", 3),
		sasDisk("sde", 4, fakePart{name: "sde1", dev: "8:65"}, fakePart{name: "sde2", dev: "8:66", holders: []string{"md0"}}),
		sasDisk("sdf", 5, fakePart{name: "sdf1", dev: "8:81"}, fakePart{name: "sdf2", dev: "8:82", holders: []string{"md0"}}),
		sasDisk("sdg", 6, fakePart{name: "sdg1", dev: "8:97"}),
		sasDisk("sdh", 7),
		{name: "dm-0", devpath: "virtual", dev: "253:0", sectors: 2344225968, dmName: "vg0-lv0", slaves: []string{"sdc"}},
		{name: "md0", devpath: "virtual", dev: "9:0", sectors: 2000000, mdLevel: "raid1", slaves: []string{"sde2", "sdf2"}, holders: []string{"dm-1"}},
		{name: "dm-1", devpath: "virtual", dev: "253:1", sectors: 2000000, dmName: "vg1-root", slaves: []string{"md0"}},
	},
	mountinfo: strings.Join([]string{
		`27 1 253:1 / / rw,relatime shared:1 - ext4 /dev/mapper/vg1-root rw`,
		`22 27 0:21 / /proc rw,relatime shared:2 - proc proc rw`,
		`40 27 8:1 / /srv/my\040data rw,relatime shared:3 - ext4 /dev/sda1 rw`,
		`41 27 253:0 / /var/lib/data rw,relatime - xfs /dev/mapper/vg0-lv0 rw`,
		`42 27 0:45 /@home /home rw,relatime shared:5 - btrfs /dev/sdg1 rw,space_cache=v2`,
		`43 27 8:112 / /mnt/whole rw,relatime - ext4 /dev/sdh rw`,
	}, "\n") + "\n",
	swaps: "/dev/sdb2                               partition\t8388604\t\t0\t\t-2\n",
}
