package blockdev

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
)

// System is where the disk inventory and the in-use checks read from. The
// zero value reads the running machine (/sys, /proc, /dev); tests point the
// roots at fake trees so they never depend on (or touch) the real disks.
type System struct {
	// SysRoot is the sysfs mount point (default /sys).
	SysRoot string
	// ProcRoot is the procfs mount point (default /proc).
	ProcRoot string
	// DevRoot is the device directory (default /dev). Disk paths are
	// DevRoot/<name>.
	DevRoot string
}

func (s System) sysRoot() string  { return orDefault(s.SysRoot, "/sys") }
func (s System) procRoot() string { return orDefault(s.ProcRoot, "/proc") }
func (s System) devRoot() string  { return orDefault(s.DevRoot, "/dev") }

func orDefault(v, def string) string {
	if v == "" {
		return def
	}
	return v
}

// ScanOptions tune System.Disks.
type ScanOptions struct {
	// IncludeLoop lists loop devices as eligible disks (agent tests deploy
	// onto loop devices). Empty (detached) loop devices are still skipped.
	IncludeLoop bool
	// IncludeVirtual lists every virtual block device (loop, nbd, dm, md,
	// zram, ram) as eligible. It implies IncludeLoop.
	IncludeVirtual bool
	// All also returns the devices that are not eligible, each with Skipped
	// set to the reason (for `byoi disks --all`).
	All bool
}

// Disk is one whole disk as seen in sysfs.
type Disk struct {
	// Name is the kernel name (sda, nvme0n1).
	Name string `json:"name"`
	// Path is the device node (DevRoot/Name).
	Path string `json:"path"`
	// Size is the size in bytes.
	Size int64 `json:"size"`
	// LogicalSectorSize and PhysicalSectorSize are in bytes.
	LogicalSectorSize  int64 `json:"logicalSectorSize"`
	PhysicalSectorSize int64 `json:"physicalSectorSize"`
	// Rotational is true for spinning disks.
	Rotational bool   `json:"rotational"`
	Model      string `json:"model,omitempty"`
	Vendor     string `json:"vendor,omitempty"`
	Serial     string `json:"serial,omitempty"`
	WWN        string `json:"wwn,omitempty"`
	// Transport is one of nvme, sata, sas, usb, virtio, scsi, mmc, xen,
	// virtual, or "" when unknown.
	Transport string `json:"transport,omitempty"`
	// DiskType is the OVH diskType: NVME, SSD, SAS or SATA (see DiskTypeOf).
	DiskType string `json:"diskType,omitempty"`
	// RAIDController is non-empty when the disk is a hardware RAID volume:
	// a logical drive of a RAID controller's driver (see raidVolume), named
	// by the volume's vendor and model as the controller reports them
	// ("DELL PERC H730P Mini"), or the driver when it reports none.
	RAIDController string `json:"raidController,omitempty"`
	// Driver is the driver bound to the disk's controller (nvme, ahci,
	// megaraid_sas, mpt3sas, virtio_blk, ...), "" when unknown; Controller
	// is that device's sysfs name (a PCI function "0000:03:00.0", or
	// "virtio3").
	Driver     string `json:"driver,omitempty"`
	Controller string `json:"controller,omitempty"`
	Removable  bool   `json:"removable"`
	ReadOnly   bool   `json:"readOnly"`
	// InUse is true when the running system uses the disk; InUseReason
	// says how (see System.InUse).
	InUse       bool   `json:"inUse"`
	InUseReason string `json:"inUseReason,omitempty"`
	// Skipped is the reason the disk is not eligible (only listed with
	// ScanOptions.All); empty for eligible disks.
	Skipped string `json:"skipped,omitempty"`
}

// String renders a Disk for logs: "sda (SATA 4001 GB, HGST HUS726T4TALA6L4)".
func (d Disk) String() string {
	typ := d.DiskType
	if typ == "" {
		typ = DiskTypeOf(d)
	}
	s := fmt.Sprintf("%s (%s %d GB", d.Path, typ, GB(d.Size))
	if d.Model != "" {
		s += ", " + d.Model
	}
	return s + ")"
}

// virtualPrefixes are kernel names of block devices that are not disks of
// the server. Order matters only for readability.
var virtualPrefixes = []string{"loop", "ram", "zram", "dm-", "md", "nbd"}

// diskPrefixes are kernel names of whole disks that can receive an image.
var diskPrefixes = []string{"sd", "nvme", "vd", "xvd", "hd", "mmcblk"}

// classify says whether name is a candidate disk, and if not why.
func classify(name string, opts ScanOptions) (virtual bool, skip string) {
	for _, p := range virtualPrefixes {
		if strings.HasPrefix(name, p) {
			if opts.IncludeVirtual || (p == "loop" && opts.IncludeLoop) {
				return true, ""
			}
			return true, "virtual device (" + strings.TrimSuffix(p, "-") + ")"
		}
	}
	switch {
	case strings.HasPrefix(name, "sr"):
		return false, "optical drive"
	case strings.HasPrefix(name, "fd"):
		return false, "floppy drive"
	case strings.HasPrefix(name, "mmcblk") && (strings.Contains(name, "boot") || strings.Contains(name, "rpmb")):
		return false, "eMMC boot/rpmb area"
	case strings.HasPrefix(name, "nvme") && strings.Contains(name, "c"):
		// nvme0c0n1: a per-controller path of a multipath namespace.
		return false, "NVMe multipath controller path"
	}
	for _, p := range diskPrefixes {
		if strings.HasPrefix(name, p) {
			return false, ""
		}
	}
	return false, "not a disk"
}

// Disks lists the whole disks of the system in natural name order (sda <
// sdb < sdaa, nvme0n1 < nvme1n1 < nvme10n1). Loop, ram, zram, dm, md and
// nbd devices are left out unless opts asks for them; optical, floppy,
// removable, read-only, USB and empty devices are never eligible. With
// opts.All the ineligible devices are listed too, with Skipped set.
// Eligible disks carry their in-use state (System.InUse).
func (s System) Disks(opts ScanOptions) ([]Disk, error) {
	names, err := s.blockNames()
	if err != nil {
		return nil, err
	}
	u, err := s.usage()
	if err != nil {
		return nil, err
	}
	var disks []Disk
	for _, name := range names {
		virtual, skip := classify(name, opts)
		if skip != "" && !opts.All {
			continue
		}
		d, err := s.readDisk(name, virtual)
		if err != nil {
			return nil, err
		}
		if skip == "" {
			skip = eligibility(d)
		}
		if skip != "" {
			if !opts.All {
				continue
			}
			d.Skipped = skip
		}
		if d.Skipped == "" || d.Size > 0 {
			d.InUseReason = u.reason(name)
			d.InUse = d.InUseReason != ""
		}
		disks = append(disks, d)
	}
	return disks, nil
}

// eligibility returns why a disk cannot receive an image, or "".
func eligibility(d Disk) string {
	switch {
	case d.Size == 0:
		return "empty (size 0)"
	case d.ReadOnly:
		return "read-only"
	case d.Removable:
		return "removable"
	case d.Transport == "usb":
		return "USB device"
	}
	return ""
}

// blockNames lists SysRoot/block in natural order.
func (s System) blockNames() ([]string, error) {
	ents, err := os.ReadDir(filepath.Join(s.sysRoot(), "block"))
	if err != nil {
		return nil, fmt.Errorf("list block devices: %w", err)
	}
	names := make([]string, 0, len(ents))
	for _, e := range ents {
		names = append(names, e.Name())
	}
	sort.Slice(names, func(i, j int) bool { return lessName(names[i], names[j]) })
	return names, nil
}

func (s System) readDisk(name string, virtual bool) (Disk, error) {
	dir := filepath.Join(s.sysRoot(), "block", name)
	d := Disk{Name: name, Path: filepath.Join(s.devRoot(), name)}
	sectors, err := readInt(filepath.Join(dir, "size"))
	if err != nil {
		return Disk{}, fmt.Errorf("disk %s: %w", name, err)
	}
	// sysfs "size" is always in 512-byte units, whatever the sector size
	// (include/linux/blkdev.h: SECTOR_SHIFT).
	d.Size = sectors * 512
	d.LogicalSectorSize = readIntOr(filepath.Join(dir, "queue", "logical_block_size"), 512)
	d.PhysicalSectorSize = readIntOr(filepath.Join(dir, "queue", "physical_block_size"), d.LogicalSectorSize)
	d.Rotational = readString(filepath.Join(dir, "queue", "rotational")) == "1"
	d.Removable = readString(filepath.Join(dir, "removable")) == "1"
	d.ReadOnly = readString(filepath.Join(dir, "ro")) == "1"
	dev := filepath.Join(dir, "device")
	d.Model = readString(filepath.Join(dev, "model"))
	d.Vendor = readString(filepath.Join(dev, "vendor"))
	d.Serial = firstNonEmpty(
		readString(filepath.Join(dev, "serial")),
		readString(filepath.Join(dir, "serial")),
		vpdSerial(filepath.Join(dev, "vpd_pg80")),
	)
	d.WWN = firstNonEmpty(
		readString(filepath.Join(dev, "wwid")),
		readString(filepath.Join(dir, "wwid")),
	)
	real, err := filepath.EvalSymlinks(dir)
	if err != nil {
		real = dir
	}
	d.Transport = transportOf(name, strings.TrimPrefix(real, s.sysRoot()), virtual)
	var channel int
	var scsiDev string
	d.Driver, d.Controller, scsiDev, channel = controllerOf(s.sysRoot(), dev)
	if raidVolume(d.Driver, channel, scsiDev) {
		d.RAIDController = strings.TrimSpace(d.Vendor + " " + d.Model)
		if d.RAIDController == "" {
			d.RAIDController = d.Driver
		}
	}
	d.DiskType = DiskTypeOf(d)
	return d, nil
}

// transportOf derives the transport from the kernel name and the resolved
// sysfs path of the disk (/sys/devices/...): the bus the disk hangs from is
// in that path.
func transportOf(name, devpath string, virtual bool) string {
	switch {
	// NVMe namespaces with native multipath live under
	// /sys/devices/virtual/nvme-subsystem/: test the name first.
	case strings.HasPrefix(name, "nvme"):
		return "nvme"
	case strings.HasPrefix(name, "mmcblk"):
		return "mmc"
	case strings.HasPrefix(name, "xvd"):
		return "xen"
	case virtual || strings.Contains(devpath, "/virtual/"):
		return "virtual"
	case strings.Contains(devpath, "/usb"):
		return "usb"
	case strings.HasPrefix(name, "vd") || strings.Contains(devpath, "/virtio"):
		return "virtio"
	case strings.Contains(devpath, "/end_device-") || strings.Contains(devpath, "/sas_") ||
		strings.Contains(devpath, "/port-"):
		return "sas"
	case strings.Contains(devpath, "/ata"):
		return "sata"
	case strings.HasPrefix(name, "sd") || strings.HasPrefix(name, "hd"):
		return "scsi"
	}
	return ""
}

// scsiAddr is a SCSI device's name, host:channel:target:lun.
var scsiAddr = regexp.MustCompile(`^[0-9]+:([0-9]+):[0-9]+:[0-9]+$`)

// controllerOf finds the controller of a disk from its device directory:
// the first device up the sysfs tree, from the disk's own device, that has
// a driver and is not the SCSI disk itself (whose driver is sd). It returns
// that driver, the device's name, and the disk's SCSI device directory and
// channel ("", -1 when the disk is not SCSI).
func controllerOf(sysRoot, dev string) (driver, controller, scsiDev string, channel int) {
	channel = -1
	real, err := filepath.EvalSymlinks(dev)
	if err != nil {
		return "", "", "", -1
	}
	if m := scsiAddr.FindStringSubmatch(filepath.Base(real)); m != nil {
		scsiDev = real
		channel, _ = strconv.Atoi(m[1])
	}
	top := filepath.Join(sysRoot, "devices")
	for p := real; strings.HasPrefix(p, top+string(filepath.Separator)); p = filepath.Dir(p) {
		t, err := os.Readlink(filepath.Join(p, "driver"))
		if err != nil || p == scsiDev {
			continue
		}
		return filepath.Base(t), filepath.Base(p), scsiDev, channel
	}
	return "", "", scsiDev, channel
}

// raidVolume decides whether a disk is a hardware RAID volume (a logical
// drive) or a disk the controller passes through, from its controller's
// driver and where the driver puts the disk, as each driver numbers its
// SCSI channels:
//
//   - megaraid_sas (Broadcom/LSI MegaRAID, Dell PERC, Lenovo, Fujitsu):
//     physical (JBOD) disks on channels 0-1, logical drives on 2-3
//     (MEGASAS_MAX_PD_CHANNELS);
//   - mpt3sas, mpt2sas (Broadcom SAS HBAs with IR firmware): volumes on
//     channel 1 (RAID_CHANNEL), disks on 0;
//   - aacraid (Microchip Adaptec): containers on channel 0, disks beyond;
//   - hpsa, smartpqi (HPE Smart Array, Microchip SmartPQI): the device's
//     raid_level attribute, "N/A" for a physical disk;
//   - arcmsr, 3w-9xxx, 3w-sas (Areca, 3ware): volumes only;
//
// anything else (ahci, mptsas, sym53c8xx, vmw_pvscsi, virtio, nvme) passes
// disks through. Model names play no part: a disk named "RAID" behind an
// HBA is a disk, a volume named "Virtual Disk" behind MegaRAID a volume.
func raidVolume(driver string, channel int, scsiDev string) bool {
	switch strings.ReplaceAll(driver, "-", "_") {
	case "megaraid_sas":
		return channel >= 2
	case "mpt3sas", "mpt2sas":
		return channel == 1
	case "aacraid":
		return channel == 0
	case "hpsa", "smartpqi":
		l := readString(filepath.Join(scsiDev, "raid_level"))
		return scsiDev != "" && l != "" && l != "N/A"
	case "arcmsr", "3w_9xxx", "3w_sas", "3w_xxxx":
		return true
	}
	return false
}

// DiskTypeOf maps a disk to OVH's diskType values (SSD, SATA, SAS, NVME):
//
//   - transport nvme → NVME
//   - any other non-rotational disk (sata, sas, scsi, virtio, mmc, ...) → SSD
//   - rotational sas or scsi (this includes hardware RAID volumes, which
//     show as SCSI disks) → SAS
//   - any other rotational disk (sata, virtio, xen, ...) → SATA
func DiskTypeOf(d Disk) string {
	switch {
	case d.Transport == "nvme":
		return "NVME"
	case !d.Rotational:
		return "SSD"
	case d.Transport == "sas" || d.Transport == "scsi":
		return "SAS"
	}
	return "SATA"
}

// vpdSerial reads the unit serial number from a SCSI VPD page 0x80 (SPC-4
// 7.8.15: byte 1 page code 0x80, bytes 2-3 length, serial from byte 4).
func vpdSerial(path string) string {
	b, err := os.ReadFile(path)
	if err != nil || len(b) < 4 || b[1] != 0x80 {
		return ""
	}
	n := int(b[2])<<8 | int(b[3])
	if 4+n > len(b) {
		n = len(b) - 4
	}
	return strings.TrimSpace(strings.Trim(string(b[4:4+n]), "\x00"))
}

func firstNonEmpty(v ...string) string {
	for _, s := range v {
		if s != "" {
			return s
		}
	}
	return ""
}

// readString returns the trimmed content of a sysfs attribute, "" when it
// is missing or unreadable (most attributes are optional).
func readString(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

func readInt(path string) (int64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, fmt.Errorf("read %s: %w", path, err)
	}
	v, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("read %s: %w", path, err)
	}
	if v < 0 {
		return 0, fmt.Errorf("read %s: negative value %d", path, v)
	}
	return v, nil
}

func readIntOr(path string, def int64) int64 {
	v, err := readInt(path)
	if err != nil || v <= 0 {
		return def
	}
	return v
}

// listDir returns the names in dir, nil when it does not exist.
func listDir(dir string) ([]string, error) {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", dir, err)
	}
	names := make([]string, 0, len(ents))
	for _, e := range ents {
		names = append(names, e.Name())
	}
	sort.Slice(names, func(i, j int) bool { return lessName(names[i], names[j]) })
	return names, nil
}

// namePrefixes are the kernel driver prefixes lessName sorts by first.
var namePrefixes = []string{"dm-", "hd", "loop", "md", "mmcblk", "nbd", "nvme", "ram", "sd", "sr", "vd", "xvd", "zram"}

// splitPrefix splits a kernel name into its driver prefix (a known one, or
// the leading letters) and the rest.
func splitPrefix(s string) (string, string) {
	for _, p := range namePrefixes {
		if strings.HasPrefix(s, p) {
			return p, s[len(p):]
		}
	}
	i := 0
	for i < len(s) && !isDigit(s[i]) {
		i++
	}
	return s[:i], s[i:]
}

// lessName orders kernel names naturally: by driver prefix, then digit
// runs compare as numbers and letter runs compare shorter first, so sda <
// sdb < sdz < sdaa, nvme0n1 < nvme1n1 < nvme10n1, and nvme* < sd*.
func lessName(a, b string) bool {
	pa, a2 := splitPrefix(a)
	pb, b2 := splitPrefix(b)
	if pa != pb {
		return pa < pb
	}
	a, b = a2, b2
	for a != "" && b != "" {
		ra, restA := nameRun(a)
		rb, restB := nameRun(b)
		da, db := isDigit(ra[0]), isDigit(rb[0])
		switch {
		case da && db:
			na, nb := strings.TrimLeft(ra, "0"), strings.TrimLeft(rb, "0")
			if len(na) != len(nb) {
				return len(na) < len(nb)
			}
			if na != nb {
				return na < nb
			}
			if len(ra) != len(rb) {
				return len(ra) < len(rb)
			}
		case da != db:
			return da // digits before letters
		default:
			if len(ra) != len(rb) {
				return len(ra) < len(rb)
			}
			if ra != rb {
				return ra < rb
			}
		}
		a, b = restA, restB
	}
	return len(a) < len(b)
}

func nameRun(s string) (run, rest string) {
	d := isDigit(s[0])
	i := 1
	for i < len(s) && isDigit(s[i]) == d {
		i++
	}
	return s[:i], s[i:]
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }
