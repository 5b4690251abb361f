// Package blockdevtest builds fake machines for tests: a sysfs tree, a
// /proc mount table and swaps, and device nodes as plain files, so disk
// discovery, disk groups and in-use checks are tested without reading the
// real machine (whose disk must never be touched).
package blockdevtest

import (
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"testing"
)

// Dev describes one /sys/block entry of a fake sysfs tree. The trees are
// built by the tests into t.TempDir() (see blockdev/testdata/README.md) with the
// real layout: /sys/block/<name> is a relative symlink to
// /sys/devices/<devpath>/block/<name>, whose "device" symlink points at the
// device directory carrying model, vendor, serial, wwid and vpd_pg80.
type Dev struct {
	Name                        string
	Devpath                     string // under /sys/devices; "virtual" for virtual devices
	DevNum                      string // major:minor
	Sectors                     int64  // 512-byte units
	LBS                         int64
	PBS                         int64
	Rot                         bool
	Removable, Ro               bool
	Model, Vendor, Serial, Wwid string
	VPD80                       string // serial in a binary VPD page 0x80
	BlockSerial                 string // /sys/block/<d>/serial (virtio)
	BlockWWID                   string // /sys/block/<d>/wwid (nvme)
	Parts                       []Part
	Holders, Slaves             []string
	DMName, MDLevel             string
	Content                     []byte // of DevRoot/<name>
	// Size, when set, makes DevRoot/<name> a sparse file of that size
	// (a disk a deployment can write) instead of Content.
	Size int64
	// Attrs are more files of the device directory (raid_level, ...).
	Attrs map[string]string
}

// Part is a partition of a Dev.
type Part struct {
	Name, DevNum string
	Holders      []string
	Content      []byte
}

// Machine is a fake machine: its block devices, mount table and swaps.
type Machine struct {
	Devs      []Dev
	Mountinfo string
	Swaps     string
	// Drivers binds drivers to devices: a path under /sys/devices (a
	// disk's controller, "pci0000:00/0000:00:17.0") → the driver's name.
	Drivers map[string]string
}

// WriteFile writes content to path, creating its directories.
func WriteFile(t testing.TB, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func symlink(t testing.TB, target, path string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(target, path); err != nil {
		t.Fatal(err)
	}
}

// Roots are the directories of a fake machine, for blockdev.System's
// SysRoot, ProcRoot and DevRoot.
type Roots struct {
	Sys, Proc, Dev string
}

// Build writes the fake tree and returns its roots. Dev is left empty (a
// System then reads the default /dev) so golden output shows real-looking
// paths; withDev also creates device nodes as files under Dev (for
// InUseByPath, config-2 probes and deployments).
func (f Machine) Build(t testing.TB, withDev bool) Roots {
	t.Helper()
	root := t.TempDir()
	sys := filepath.Join(root, "sys")
	if err := os.MkdirAll(filepath.Join(sys, "block"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, d := range f.Devs {
		devdir := filepath.Join("devices", d.Devpath)
		bdir := filepath.Join(devdir, "block", d.Name)
		symlink(t, filepath.Join("..", bdir), filepath.Join(sys, "block", d.Name))
		b := filepath.Join(sys, bdir)
		WriteFile(t, filepath.Join(b, "dev"), d.DevNum+"\n")
		WriteFile(t, filepath.Join(b, "size"), strconv.FormatInt(d.Sectors, 10)+"\n")
		lbs, pbs := d.LBS, d.PBS
		if lbs == 0 {
			lbs = 512
		}
		if pbs == 0 {
			pbs = lbs
		}
		WriteFile(t, filepath.Join(b, "queue", "logical_block_size"), strconv.FormatInt(lbs, 10)+"\n")
		WriteFile(t, filepath.Join(b, "queue", "physical_block_size"), strconv.FormatInt(pbs, 10)+"\n")
		WriteFile(t, filepath.Join(b, "queue", "rotational"), map[bool]string{true: "1\n", false: "0\n"}[d.Rot])
		WriteFile(t, filepath.Join(b, "removable"), map[bool]string{true: "1\n", false: "0\n"}[d.Removable])
		WriteFile(t, filepath.Join(b, "ro"), map[bool]string{true: "1\n", false: "0\n"}[d.Ro])
		if err := os.MkdirAll(filepath.Join(b, "holders"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(filepath.Join(b, "slaves"), 0o755); err != nil {
			t.Fatal(err)
		}
		for _, h := range d.Holders {
			symlink(t, "../../"+h, filepath.Join(b, "holders", h))
		}
		for _, s := range d.Slaves {
			symlink(t, "../../"+s, filepath.Join(b, "slaves", s))
		}
		if d.DMName != "" {
			WriteFile(t, filepath.Join(b, "dm", "name"), d.DMName+"\n")
		}
		if d.MDLevel != "" {
			WriteFile(t, filepath.Join(b, "md", "level"), d.MDLevel+"\n")
		}
		if d.BlockSerial != "" {
			WriteFile(t, filepath.Join(b, "serial"), d.BlockSerial)
		}
		if d.BlockWWID != "" {
			WriteFile(t, filepath.Join(b, "wwid"), d.BlockWWID+"\n")
		}
		if d.Devpath != "virtual" {
			symlink(t, "../..", filepath.Join(b, "device"))
			dd := filepath.Join(sys, devdir)
			for file, v := range map[string]string{"model": d.Model, "vendor": d.Vendor, "serial": d.Serial, "wwid": d.Wwid} {
				if v != "" {
					// SCSI pads model and vendor with spaces.
					WriteFile(t, filepath.Join(dd, file), v+"   \n")
				}
			}
			for file, v := range d.Attrs {
				WriteFile(t, filepath.Join(dd, file), v+"\n")
			}
			if d.VPD80 != "" {
				page := append([]byte{0, 0x80, 0, byte(len(d.VPD80))}, d.VPD80...)
				WriteFile(t, filepath.Join(dd, "vpd_pg80"), string(page))
			}
		}
		for i, p := range d.Parts {
			pd := filepath.Join(b, p.Name)
			WriteFile(t, filepath.Join(pd, "dev"), p.DevNum+"\n")
			WriteFile(t, filepath.Join(pd, "partition"), strconv.Itoa(i+1)+"\n")
			WriteFile(t, filepath.Join(pd, "size"), "2048\n")
			if err := os.MkdirAll(filepath.Join(pd, "holders"), 0o755); err != nil {
				t.Fatal(err)
			}
			for _, h := range p.Holders {
				symlink(t, "../../../../"+h, filepath.Join(pd, "holders", h))
			}
		}
	}
	for devpath, drv := range f.Drivers {
		dir := filepath.Join(sys, "devices", devpath)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		symlink(t, filepath.Join(sys, "bus", "pci", "drivers", drv), filepath.Join(dir, "driver"))
	}
	WriteFile(t, filepath.Join(root, "proc", "self", "mountinfo"), f.Mountinfo)
	swaps := "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n" + f.Swaps
	WriteFile(t, filepath.Join(root, "proc", "swaps"), swaps)
	r := Roots{Sys: sys, Proc: filepath.Join(root, "proc")}
	if withDev {
		r.Dev = filepath.Join(root, "dev")
		for _, d := range f.Devs {
			if d.Size > 0 {
				sparse(t, filepath.Join(r.Dev, d.Name), d.Size)
			} else {
				WriteFile(t, filepath.Join(r.Dev, d.Name), string(d.Content))
			}
			for _, p := range d.Parts {
				WriteFile(t, filepath.Join(r.Dev, p.Name), string(p.Content))
			}
		}
		symlink(t, "../dm-0", filepath.Join(r.Dev, "mapper", "vg0-lv0"))
	}
	return r
}

// Virtio returns a machine of virtio disks (name → size in bytes, device
// nodes as sparse files when built withDev) and an empty mount table: the
// simplest machine a deployment can select a disk group on.
func Virtio(disks map[string]int64) Machine {
	m := Machine{Mountinfo: ""}
	minor := 0
	names := make([]string, 0, len(disks))
	for n := range disks {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		m.Devs = append(m.Devs, Dev{Name: n, Devpath: "pci0000:00/0000:00:0" + strconv.Itoa(4+minor/16) + ".0/virtio" + strconv.Itoa(minor/16),
			DevNum: "252:" + strconv.Itoa(minor), Sectors: disks[n] / 512, Size: disks[n]})
		minor += 16
	}
	return m
}

func sparse(t testing.TB, path string, size int64) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}
