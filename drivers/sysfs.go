package drivers

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// Device is one device of sysfs that has a modalias.
type Device struct {
	Path      string // under /sys/devices ("/devices/pci0000:00/0000:00:03.0")
	Modalias  string
	Subsystem string // pci, usb, hid, scsi, virtio, ...
	Driver    string // the driver bound to it, "" when none
}

// maxDevices bounds a scan (a real server has a few hundred).
const maxDevices = 20000

// Scan lists the devices under sysRoot/devices that have a modalias, in
// path order. sysRoot is "/sys" on a real system, a fake tree in tests.
func Scan(sysRoot string) ([]Device, error) {
	root := filepath.Join(sysRoot, "devices")
	var out []Device
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if p == root {
				return err
			}
			return nil // a device that went away, or unreadable: skip it
		}
		if d.IsDir() || d.Name() != "modalias" {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return nil
		}
		dev := filepath.Dir(p)
		alias := strings.TrimSpace(string(b))
		if alias == "" {
			return nil
		}
		if len(out) >= maxDevices {
			return fmt.Errorf("more than %d devices in %s", maxDevices, root)
		}
		out = append(out, Device{
			Path:      strings.TrimPrefix(dev, sysRoot),
			Modalias:  alias,
			Subsystem: linkBase(filepath.Join(dev, "subsystem")),
			Driver:    linkBase(filepath.Join(dev, "driver")),
		})
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("scan %s: %w", root, err)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Path < out[j].Path })
	return out, nil
}

// linkBase is the last element of a symlink's target ("" when there is no
// link): a device's driver or subsystem.
func linkBase(p string) string {
	t, err := os.Readlink(p)
	if err != nil {
		return ""
	}
	return filepath.Base(t)
}

func readHex(p string) (uint64, bool) {
	b, err := os.ReadFile(p)
	if err != nil {
		return 0, false
	}
	v, err := strconv.ParseUint(strings.TrimPrefix(strings.TrimSpace(string(b)), "0x"), 16, 32)
	return v, err == nil
}

// PCIDevice is a PCI function as sysfs describes it.
type PCIDevice struct {
	Slot           string // "0000:00:03.0"
	Vendor, Device uint16
	Class          uint32 // base class << 16 | subclass << 8 | prog-if
	Driver         string
}

// ID is "vendor:device" in hex ("8086:1572").
func (p PCIDevice) ID() string { return fmt.Sprintf("%04x:%04x", p.Vendor, p.Device) }

// ClassName names the PCI class (base class and subclass) of the network
// and storage controllers, as lspci does; "" for other classes.
func (p PCIDevice) ClassName() string {
	return classNames[p.Class>>8]
}

// Network and mass storage controllers (PCI code and ID assignment
// specification, base classes 01 and 02).
var classNames = map[uint32]string{
	0x0100: "SCSI storage controller", 0x0101: "IDE interface", 0x0104: "RAID bus controller",
	0x0105: "ATA controller", 0x0106: "SATA controller", 0x0107: "Serial Attached SCSI controller",
	0x0108: "Non-Volatile memory controller", 0x0180: "Mass storage controller",
	0x0200: "Ethernet controller", 0x0207: "InfiniBand controller", 0x0208: "Fabric controller",
	0x0280: "Network controller",
}

// IsNetwork and IsStorage tell the controllers the inventory cares about.
func (p PCIDevice) IsNetwork() bool { return p.Class>>16 == 0x02 }
func (p PCIDevice) IsStorage() bool { return p.Class>>16 == 0x01 }

// PCI lists the PCI functions of sysRoot/bus/pci/devices.
func PCI(sysRoot string) ([]PCIDevice, error) {
	dir := filepath.Join(sysRoot, "bus", "pci", "devices")
	ents, err := os.ReadDir(dir)
	if err != nil {
		if os.IsNotExist(err) {
			return nil, nil
		}
		return nil, err
	}
	var out []PCIDevice
	for _, e := range ents {
		d := filepath.Join(dir, e.Name())
		v, ok1 := readHex(filepath.Join(d, "vendor"))
		dv, ok2 := readHex(filepath.Join(d, "device"))
		c, ok3 := readHex(filepath.Join(d, "class"))
		if !ok1 || !ok2 || !ok3 {
			continue
		}
		out = append(out, PCIDevice{Slot: e.Name(), Vendor: uint16(v), Device: uint16(dv), Class: uint32(c), Driver: linkBase(filepath.Join(d, "driver"))})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Slot < out[j].Slot })
	return out, nil
}

// Unclaimed is a network or storage controller no driver claimed.
type Unclaimed struct {
	PCIDevice
	// Module is the module modules.alias names for it, when the index is
	// known and has one ("" otherwise): a driver that exists but is not
	// in the rescue, or whose probe failed.
	Module string
}

// Message is how the inventory shows it: "PCI 8086:1572 Ethernet
// controller: no driver in the rescue".
func (u Unclaimed) Message() string {
	s := "PCI " + u.ID() + " " + u.ClassName() + ": "
	if u.Module != "" {
		return s + "no driver bound (" + u.Module + " matches it)"
	}
	return s + "no driver in the rescue"
}

// FindUnclaimed lists the PCI network and storage controllers without a
// driver. aliases (may be nil) names the module that would match.
func FindUnclaimed(sysRoot string, aliases *Aliases) ([]Unclaimed, error) {
	devs, err := PCI(sysRoot)
	if err != nil {
		return nil, err
	}
	var out []Unclaimed
	for _, d := range devs {
		if d.Driver != "" || !(d.IsNetwork() || d.IsStorage()) {
			continue
		}
		u := Unclaimed{PCIDevice: d}
		if aliases != nil {
			if b, err := os.ReadFile(filepath.Join(sysRoot, "bus", "pci", "devices", d.Slot, "modalias")); err == nil {
				if m := aliases.Match(strings.TrimSpace(string(b))); len(m) > 0 {
					u.Module = m[0]
				}
			}
		}
		out = append(out, u)
	}
	return out, nil
}

// NIC is a network interface backed by a device, with its driver.
type NIC struct {
	Name, MAC, Driver string
	PCI               string // the PCI function's vendor:device, when on PCI
}

// NICs lists sysRoot/class/net's interfaces that have a device (not lo,
// not virtual ones), with the driver bound to it.
func NICs(sysRoot string) ([]NIC, error) {
	dir := filepath.Join(sysRoot, "class", "net")
	ents, err := os.ReadDir(dir)
	if err != nil {
		if os.IsNotExist(err) {
			return nil, nil
		}
		return nil, err
	}
	var out []NIC
	for _, e := range ents {
		d := filepath.Join(dir, e.Name())
		dev := filepath.Join(d, "device")
		if _, err := os.Stat(dev); err != nil {
			continue
		}
		mac, _ := os.ReadFile(filepath.Join(d, "address"))
		n := NIC{Name: e.Name(), MAC: strings.TrimSpace(string(mac)), Driver: linkBase(filepath.Join(dev, "driver"))}
		// virtio_net's device is a virtio device under the PCI function.
		real, err := filepath.EvalSymlinks(dev)
		if err != nil {
			real = dev
		}
		for p, i := real, 0; i < 2; p, i = filepath.Dir(p), i+1 {
			v, ok1 := readHex(filepath.Join(p, "vendor"))
			dv, ok2 := readHex(filepath.Join(p, "device"))
			if _, err := os.Stat(filepath.Join(p, "class")); ok1 && ok2 && err == nil {
				n.PCI = fmt.Sprintf("%04x:%04x", v, dv)
				break
			}
		}
		out = append(out, n)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}
