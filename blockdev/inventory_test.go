package blockdev

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/byoi/byoi/blockdev/blockdevtest"
)

// golden compares got with testdata/name, rewriting it with -update.
func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test ./blockdev -run %s -update)", err, t.Name())
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs (go test ./blockdev -run %s -update to accept):\n--- got\n%s\n--- want\n%s", path, t.Name(), got, want)
	}
}

func names(disks []Disk) []string {
	var n []string
	for _, d := range disks {
		n = append(n, d.Name)
	}
	return n
}

func TestLessName(t *testing.T) {
	ordered := []string{"dm-0", "dm-2", "dm-10", "loop0", "md0", "nvme0n1", "nvme0n2", "nvme1n1", "nvme2n1", "nvme10n1", "sda", "sdb", "sdz", "sdaa", "sdab", "sdba", "vda", "xvda"}
	for i := range ordered {
		for j := range ordered {
			a, b := ordered[i], ordered[j]
			if i < j && !lessName(a, b) || i >= j && lessName(a, b) {
				t.Errorf("lessName(%s, %s) = %v", a, b, lessName(a, b))
			}
		}
	}
	if !lessName("nvme0n1p2", "nvme0n1p10") || !lessName("sda2", "sda10") {
		t.Error("partition numbers not natural")
	}
}

func TestDisksMixed(t *testing.T) {
	s := build(t, mixedServer, false)
	disks, err := s.Disks(ScanOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := strings.Join(names(disks), " "), "nvme0n1 nvme1n1 sda sdb"; got != want {
		t.Fatalf("disks %q, want %q", got, want)
	}
	nv := disks[0]
	if nv.Size != 1920383410176 || nv.LogicalSectorSize != 512 || nv.Transport != "nvme" || nv.DiskType != "NVME" ||
		nv.Model != "SAMSUNG MZQL21T9HCJR-00A07" || nv.Serial != "S64GNE0R600001" || nv.Path != "/dev/nvme0n1" ||
		nv.WWN != "eui.36344730526000010025384500000001" || nv.InUse || nv.Rotational {
		t.Errorf("nvme0n1: %+v", nv)
	}
	sda := disks[2]
	if sda.Size != 4000787030016 || sda.PhysicalSectorSize != 4096 || sda.Transport != "sata" || sda.DiskType != "SATA" ||
		sda.Serial != "V6G0AAAA" || sda.Vendor != "ATA" || sda.Model != "HGST HUS726T4TAL" || sda.WWN != "naa.5000cca0bbcd0001" || !sda.Rotational {
		t.Errorf("sda: %+v", sda)
	}

	all, err := s.Disks(ScanOptions{All: true})
	if err != nil {
		t.Fatal(err)
	}
	skipped := map[string]string{}
	for _, d := range all {
		skipped[d.Name] = d.Skipped
	}
	want := map[string]string{
		"sda": "", "sdb": "", "nvme0n1": "", "nvme1n1": "",
		"sdc": "removable", "sr0": "optical drive", "loop0": "virtual device (loop)", "loop1": "virtual device (loop)",
		"dm-0": "virtual device (dm)", "zram0": "virtual device (zram)", "mmcblk0boot0": "eMMC boot/rpmb area",
	}
	for n, w := range want {
		if g, ok := skipped[n]; !ok || g != w {
			t.Errorf("%s: skipped %q (listed %v), want %q", n, g, ok, w)
		}
	}
	if len(all) != len(want) {
		t.Errorf("listed %v", names(all))
	}
	for _, d := range all {
		if d.Name == "zram0" && (!d.InUse || !strings.Contains(d.InUseReason, "swap")) {
			t.Errorf("zram0 swap not reported: %+v", d)
		}
		if d.Name == "sdc" && d.Transport != "usb" {
			t.Errorf("sdc transport %q", d.Transport)
		}
	}

	withLoop, err := s.Disks(ScanOptions{IncludeLoop: true})
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(names(withLoop), " "); got != "loop0 nvme0n1 nvme1n1 sda sdb" {
		t.Errorf("IncludeLoop: %s", got)
	}
	virt, err := s.Disks(ScanOptions{IncludeVirtual: true})
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(names(virt), " "); got != "dm-0 loop0 nvme0n1 nvme1n1 sda sdb zram0" {
		t.Errorf("IncludeVirtual: %s", got)
	}
	for _, d := range virt {
		if d.Name == "zram0" && !d.InUse {
			t.Errorf("zram0 in swap not in use")
		}
	}
}

func TestGroupsGolden(t *testing.T) {
	for _, tc := range []struct {
		name string
		fs   blockdevtest.Machine
		want []string // group descriptions
	}{
		{"mixed", mixedServer, []string{"2 X Disk NVME 1920 GB, JBOD", "2 X Disk SATA 4001 GB, JBOD"}},
		{"raid", raidServer, []string{"2 X Disk SSD 480 GB, JBOD", "2 X Disk SAS 1200 GB, JBOD", "1 X Disk SAS 1199 GB, HW RAID (DELL PERC H730P Mini)"}},
		{"busy", busyServer, []string{"8 X Disk SAS 1200 GB, JBOD"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := build(t, tc.fs, false)
			disks, err := s.Disks(ScanOptions{All: true})
			if err != nil {
				t.Fatal(err)
			}
			groups := MakeGroups(disks)
			var got []string
			for i, g := range groups {
				if g.ID != i+1 {
					t.Errorf("group %d has ID %d", i, g.ID)
				}
				got = append(got, g.Description)
			}
			if strings.Join(got, "|") != strings.Join(tc.want, "|") {
				t.Errorf("groups %q, want %q", got, tc.want)
			}
			// Deterministic: the same disks in any order give the same groups.
			rev := append([]Disk(nil), disks...)
			for i, j := 0, len(rev)-1; i < j; i, j = i+1, j-1 {
				rev[i], rev[j] = rev[j], rev[i]
			}
			j1, err := GroupsJSON(groups)
			if err != nil {
				t.Fatal(err)
			}
			j2, err := GroupsJSON(MakeGroups(rev))
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(j1, j2) {
				t.Error("groups depend on the order of the disks")
			}
			var tbl bytes.Buffer
			if err := WriteTable(&tbl, groups); err != nil {
				t.Fatal(err)
			}
			tbl.WriteString("\n")
			if err := WriteSkipped(&tbl, disks); err != nil {
				t.Fatal(err)
			}
			golden(t, tc.name+".table.golden", tbl.Bytes())
			golden(t, tc.name+".json.golden", append(j1, '\n'))
			var back []map[string]any
			if err := json.Unmarshal(j1, &back); err != nil {
				t.Fatal(err)
			}
			for _, g := range back {
				for _, k := range []string{"diskGroupId", "description", "diskSize", "diskType", "numberOfDisks", "raidController", "disks"} {
					if _, ok := g[k]; !ok {
						t.Errorf("json group lacks %s", k)
					}
				}
			}
		})
	}
}

func TestSelectDisk(t *testing.T) {
	s := build(t, mixedServer, false)
	disks, err := s.Disks(ScanOptions{})
	if err != nil {
		t.Fatal(err)
	}
	groups := MakeGroups(disks)
	for _, tc := range []struct {
		id   int
		want string
	}{{0, "nvme0n1"}, {1, "nvme0n1"}, {2, "sda"}} {
		d, err := SelectDisk(groups, tc.id)
		if err != nil || d.Name != tc.want {
			t.Errorf("SelectDisk(%d) = %s, %v; want %s", tc.id, d.Name, err, tc.want)
		}
	}
	for _, id := range []int{3, -1, 99} {
		_, err := SelectDisk(groups, id)
		if !errors.Is(err, ErrNoGroup) {
			t.Fatalf("SelectDisk(%d): %v", id, err)
		}
		for _, w := range []string{"1 (2 X Disk NVME 1920 GB, JBOD)", "2 (2 X Disk SATA 4001 GB, JBOD)"} {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("SelectDisk(%d) error %q does not list %q", id, err, w)
			}
		}
	}
	if _, err := SelectDisk(nil, 0); !errors.Is(err, ErrNoGroup) {
		t.Errorf("no groups: %v", err)
	}

	b := build(t, busyServer, false)
	disks, err = b.Disks(ScanOptions{})
	if err != nil {
		t.Fatal(err)
	}
	_, err = SelectDisk(MakeGroups(disks), 0)
	if !errors.Is(err, ErrInUse) || !strings.Contains(err.Error(), "/srv/my data") {
		t.Errorf("busy first disk: %v", err)
	}
}

func TestInUseFake(t *testing.T) {
	s := build(t, busyServer, true)
	want := map[string]string{
		"sda": "partition sda1 is mounted at /srv/my data",
		"sdb": "partition sdb2 is active swap",
		"sdc": "disk sdc is held by dm-0 (device-mapper vg0-lv0, mounted at /var/lib/data)",
		"sdd": "",
		"sde": "holds the running system (/ is on dm-1); partition sde2 is held by md0 (md RAID raid1)",
		"sdf": "holds the running system (/ is on dm-1); partition sdf2 is held by md0 (md RAID raid1)",
		"sdg": "partition sdg1 is mounted at /home",
		"sdh": "disk sdh is mounted at /mnt/whole",
	}
	for name, w := range want {
		got, err := s.InUse(name)
		if err != nil || got != w {
			t.Errorf("InUse(%s) = %q, %v\n want %q", name, got, err, w)
		}
		got, err = s.InUseByPath(filepath.Join(s.DevRoot, name))
		if err != nil || got != w {
			t.Errorf("InUseByPath(%s) = %q, %v", name, got, err)
		}
	}
	// A partition resolves to its disk.
	if got, err := s.InUse("sde1"); err != nil || !strings.Contains(got, "running system") {
		t.Errorf("InUse(sde1) = %q, %v", got, err)
	}
	// A partition node is never a target: a BYOI target is a whole disk.
	if got, err := s.InUseByPath(filepath.Join(s.DevRoot, "sdb1")); err != nil || got != "it is partition sdb1 of disk sdb, not a whole disk" {
		t.Errorf("InUseByPath(sdb1) = %q, %v", got, err)
	}
	if got, err := s.InUseByPath(filepath.Join(s.DevRoot, "sdd")); err != nil || got != "" {
		t.Errorf("InUseByPath(sdd) = %q, %v", got, err)
	}
	// A /dev/mapper symlink resolves to dm-0, which is mounted.
	if got, err := s.InUseByPath(filepath.Join(s.DevRoot, "mapper", "vg0-lv0")); err != nil || !strings.Contains(got, "/var/lib/data") {
		t.Errorf("InUseByPath(mapper) = %q, %v", got, err)
	}
	if err := s.CheckNotInUse(filepath.Join(s.DevRoot, "sda")); !errors.Is(err, ErrInUse) || !strings.Contains(err.Error(), "/srv/my data") {
		t.Errorf("CheckNotInUse(sda): %v", err)
	}
	if err := s.CheckNotInUse(filepath.Join(s.DevRoot, "sdd")); err != nil {
		t.Errorf("CheckNotInUse(sdd): %v", err)
	}
	if _, err := s.InUse("sdz"); !errors.Is(err, ErrNotFound) {
		t.Errorf("InUse(sdz): %v", err)
	}
	// A regular file standing in for a disk is never in use.
	f := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(f, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if got, err := s.InUseByPath(f); err != nil || got != "" {
		t.Errorf("InUseByPath(file) = %q, %v", got, err)
	}
	disks, err := s.Disks(ScanOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range disks {
		if d.InUseReason != want[d.Name] || d.InUse != (want[d.Name] != "") {
			t.Errorf("Disks: %s in use %v %q", d.Name, d.InUse, d.InUseReason)
		}
	}
}

func TestUnescapeMount(t *testing.T) {
	for in, want := range map[string]string{`/a\040b`: "/a b", `/x\134y`: `/x\y`, `/t\011`: "/t\t", `/bad\04`: `/bad\04`, "/": "/"} {
		if got := unescapeMount(in); got != want {
			t.Errorf("unescapeMount(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestTransportOf(t *testing.T) {
	for _, tc := range []struct{ name, path, want string }{
		{"nvme0n1", "/devices/virtual/nvme-subsystem/nvme-subsys0/nvme0n1", "nvme"},
		{"nvme0n1", "/devices/pci0000:00/0000:00:01.1/0000:02:00.0/nvme/nvme0/nvme0n1", "nvme"},
		{"sda", "/devices/pci0000:00/0000:00:17.0/ata1/host0/target0:0:0/0:0:0:0/block/sda", "sata"},
		{"sda", "/devices/pci0000:00/0000:00:03.0/0000:04:00.0/host1/port-1:0/end_device-1:0/target1:0:0/1:0:0:0/block/sda", "sas"},
		{"sdb", "/devices/pci0000:00/0000:00:03.0/0000:04:00.0/host1/sas_host/host1/block/sdb", "sas"},
		{"sdc", "/devices/pci0000:00/0000:00:14.0/usb1/1-4/1-4:1.0/host6/target6:0:0/6:0:0:0/block/sdc", "usb"},
		{"sda", "/devices/pci0000:00/0000:00:02.0/0000:03:00.0/host0/target0:2:0/0:2:0:0/block/sda", "scsi"},
		{"sda", "/devices/pci0000:00/0000:00:04.0/virtio2/host2/target2:0:0/2:0:0:0/block/sda", "virtio"},
		{"vda", "/devices/pci0000:00/0000:00:02.0/virtio1/block/vda", "virtio"},
		{"mmcblk0", "/devices/platform/mmc0/mmc0:0001/block/mmcblk0", "mmc"},
		{"xvda", "/devices/vbd-51712/block/xvda", "xen"},
		{"loop0", "/devices/virtual/block/loop0", "virtual"},
	} {
		if got := transportOf(tc.name, tc.path, false); got != tc.want {
			t.Errorf("transportOf(%s, %s) = %q, want %q", tc.name, tc.path, got, tc.want)
		}
	}
}
