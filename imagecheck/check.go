package imagecheck

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/byoi/byoi/imagecheck/config"
	"github.com/byoi/byoi/imagecheck/vfs"
	"github.com/byoi/byoi/imagecheck/vfs/ext4"
	"github.com/byoi/byoi/imagecheck/vfs/xfs"
	"github.com/byoi/byoi/job"
	"github.com/byoi/byoi/partition"
)

const (
	guidESP       = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
	guidBIOSBoot  = "21686148-6449-6E6F-744E-656564454649"
	guidRootX8664 = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709"
	removablePath = `\EFI\BOOT\BOOTX64.EFI`

	maxConfig = 1 << 20 // a configuration file
	maxDir    = 4096    // entries of a configuration directory
)

type part struct {
	p     partition.Partition
	fs    *Filesystem // in the report
	drv   vfs.Driver  // nil when not examined
	probe vfs.Probed
	// readErr: it could not be read (I/O, the budget, the context), as
	// opposed to read and found not to be a filesystem byoi reads.
	readErr bool
}

// isReadErr tells a read failure from a verdict on the bytes.
func isReadErr(err error) bool {
	return errors.Is(err, vfs.ErrBudget) || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) ||
		errors.Is(err, io.ErrUnexpectedEOF)
}

type checker struct {
	ctx      context.Context
	r        *vfs.Reader
	size, ss int64
	facts    Facts
	rep      *Report

	table    *partition.Table
	mbr      []byte
	headOnly bool
	parts    []*part
	esp      *part
	root     *part
	tree     *vfs.Tree
	cmdline  []config.Param
	kver     string
}

func (c *checker) run() error {
	d := roDisk{r: c.r, size: c.size, ss: c.ss}
	c.mbr = make([]byte, 512)
	if _, err := c.r.ReadAt(c.mbr, 0); err != nil {
		return fmt.Errorf("imagecheck: read the first sector: %w", err)
	}
	t, err := partition.Read(d)
	if err != nil {
		if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
			return fmt.Errorf("imagecheck: %w", err)
		}
		c.add(Note, job.CheckNotExamined, "", 0, "the partition table", err.Error())
		return nil
	}
	c.table = t
	c.openAll()
	c.safe("the boot mode", c.bootMode)
	c.safe("the root filesystem", c.findRoot)
	if c.root == nil {
		return nil
	}
	c.safe("/etc/fstab", c.fstab)
	c.safe("the kernel", c.kernel)
	c.safe("cloud-init", c.cloudInit)
	c.safe("the network configuration", c.network)
	return nil
}

// openAll probes every partition and opens the filesystems byoi reads.
func (c *checker) openAll() {
	for _, p := range c.table.Partitions {
		if err := c.ctx.Err(); err != nil {
			return
		}
		if p.Start < 0 || p.Size <= 0 || p.Start >= c.size {
			continue
		}
		size := min(p.Size, c.size-p.Start)
		sr := io.NewSectionReader(c.r, p.Start, size)
		pt := &part{p: p}
		fs := Filesystem{Partition: p.Number, PartUUID: strings.ToLower(p.GUID), PartLabel: p.Name}
		c.safe(fmt.Sprintf("partition %d", p.Number), func() {
			pr, err := vfs.Probe(sr, size)
			if err != nil {
				pt.readErr = true
				c.add(Note, job.CheckNotExamined, fmt.Sprintf("partition %d", p.Number), 0, fmt.Sprintf("partition %d", p.Number), err.Error())
				return
			}
			pt.probe = pr
			fs.Type, fs.UUID, fs.Label = pr.Type, pr.UUID, pr.Label
			var drv vfs.Driver
			switch pr.Type {
			case "ext2", "ext3", "ext4":
				drv, err = ext4.Open(sr, size)
			case "xfs":
				drv, err = xfs.Open(sr, size)
			case "vfat":
				drv, err = vfs.OpenFAT(sr, size)
			case "", "swap":
				return // nothing to read: not worth a note
			case "iso9660":
				if strings.EqualFold(pr.Label, "config-2") {
					return // a ConfigDrive (byoi's, once written): no system in it
				}
				fallthrough
			default:
				c.add(Note, job.CheckNotExamined, fmt.Sprintf("partition %d", p.Number), 0,
					fmt.Sprintf("partition %d (%s)", p.Number, pr.Type), "byoi reads ext2/3/4, XFS and FAT")
				return
			}
			if err != nil {
				pt.readErr = isReadErr(err)
				c.add(Note, job.CheckNotExamined, fmt.Sprintf("partition %d", p.Number), 0,
					fmt.Sprintf("partition %d (%s)", p.Number, pr.Type), err.Error())
				return
			}
			pt.drv, fs.Examined = drv, true
		})
		c.rep.Filesystems = append(c.rep.Filesystems, fs)
		pt.fs = &c.rep.Filesystems[len(c.rep.Filesystems)-1]
		c.parts = append(c.parts, pt)
	}
	for _, pt := range c.parts { // pointers into the final slice
		for i := range c.rep.Filesystems {
			if c.rep.Filesystems[i].Partition == pt.p.Number {
				pt.fs = &c.rep.Filesystems[i]
			}
		}
	}
}

// bootMode checks the server's boot mode against the image.
func (c *checker) bootMode() {
	var esp *partition.Partition
	biosBoot, legacyAttr := false, false
	for i := range c.table.Partitions {
		p := &c.table.Partitions[i]
		switch {
		case strings.EqualFold(p.TypeGUID, guidESP) || (c.table.Type == "mbr" && p.MBRType == 0xEF):
			if esp == nil {
				esp = p
			}
		case strings.EqualFold(p.TypeGUID, guidBIOSBoot):
			biosBoot = true
		}
		if c.table.Type == "gpt" && p.Attributes&(1<<2) != 0 {
			legacyAttr = true
		}
	}
	for _, pt := range c.parts {
		if esp != nil && pt.p.Number == esp.Number {
			c.esp = pt
		}
	}
	switch c.facts.BootMode {
	case BootUEFI:
		if esp == nil {
			c.add(Refuse, job.CheckUEFINoESP, "", 0)
			return
		}
		if c.headOnly {
			return
		}
		file := fmt.Sprintf("partition %d", esp.Number)
		if c.esp != nil && c.esp.readErr {
			return // not read: its note says so
		}
		if c.esp == nil || c.esp.drv == nil || c.esp.drv.Kind() != "vfat" {
			c.add(Refuse, job.CheckUEFINoLoader, file, 0, esp.Number, "it is not a readable FAT filesystem")
			return
		}
		t := vfs.NewTree(c.esp.drv)
		if p := c.facts.EFIBootloaderPath; p != "" {
			ok, err := t.Exists(strings.ReplaceAll(p, `\`, "/"))
			if err != nil {
				c.add(Note, job.CheckNotExamined, file, 0, p, err.Error())
				return
			}
			if !ok {
				c.add(Refuse, job.CheckUEFINoLoader, file, 0, esp.Number, "efiBootloaderPath "+p+" is not there")
			}
			return
		}
		ok, err := t.Exists(strings.ReplaceAll(removablePath, `\`, "/"))
		if ok {
			return
		}
		// Any loader under \EFI\<vendor>\ is one the agent can write a
		// boot entry for.
		dirs, err2 := t.ReadDir("EFI", maxDir)
		if err == nil && err2 != nil && !vfs.IsNotExist(err2) {
			err = err2
		}
		if err != nil {
			c.add(Note, job.CheckNotExamined, file, 0, `\EFI`, err.Error())
			return
		}
		if err2 == nil {
			for _, d := range dirs {
				if d.Node.Type != vfs.TypeDir {
					continue
				}
				files, _ := t.ReadDir("EFI/"+d.Name, maxDir)
				for _, f := range files {
					if f.Node.Type == vfs.TypeRegular && strings.HasSuffix(strings.ToLower(f.Name), ".efi") {
						return
					}
				}
			}
		}
		c.add(Refuse, job.CheckUEFINoLoader, file, 0, esp.Number, `no .efi file under \EFI`)
	case BootLegacy:
		if bytes.Equal(c.mbr[:440], make([]byte, 440)) {
			c.add(Refuse, job.CheckBIOSNoBootCode, "partition table", 0)
			return
		}
		if c.table.Type == "gpt" && !biosBoot && !legacyAttr {
			c.add(Warn, job.CheckBIOSNoCoreSpace, "partition table", 0)
		}
	}
}

// exists tells whether p resolves in t (an unreadable path counts as
// absent).
func exists(t *vfs.Tree, p string) bool {
	ok, _ := t.Exists(p)
	return ok
}

// findRoot picks the Linux root filesystem: a partition of the x86-64
// root type, else the first holding /etc/fstab or an os-release.
func (c *checker) findRoot() {
	var cands []*part
	for _, pt := range c.parts {
		if pt.drv == nil || pt.drv.Kind() == "vfat" {
			continue
		}
		t := vfs.NewTree(pt.drv)
		if exists(t, "etc/fstab") || exists(t, "etc/os-release") || exists(t, "usr/lib/os-release") {
			cands = append(cands, pt)
		}
	}
	for _, pt := range cands {
		if strings.EqualFold(pt.p.TypeGUID, guidRootX8664) {
			c.root = pt
		}
	}
	if c.root == nil && len(cands) > 0 {
		c.root = cands[0]
	}
	if c.root == nil {
		c.add(Note, job.CheckNoLinuxRoot, "", 0, "no ext2/3/4 or XFS filesystem holds /etc/fstab or an os-release")
		return
	}
	c.root.fs.Mount = "/"
	c.tree = vfs.NewTree(c.root.drv)
}

// resolveSpec finds the partition a fstab or root= device names; known is
// false for names that cannot be judged here (LVM, md, network).
func (c *checker) resolveSpec(spec string) (pt *part, known bool) {
	key, val, _ := strings.Cut(spec, "=")
	switch {
	case strings.HasPrefix(spec, "/dev/disk/by-uuid/"):
		key, val = "UUID", strings.TrimPrefix(spec, "/dev/disk/by-uuid/")
	case strings.HasPrefix(spec, "/dev/disk/by-label/"):
		key, val = "LABEL", unhex(strings.TrimPrefix(spec, "/dev/disk/by-label/"))
	case strings.HasPrefix(spec, "/dev/disk/by-partuuid/"):
		key, val = "PARTUUID", strings.TrimPrefix(spec, "/dev/disk/by-partuuid/")
	case strings.HasPrefix(spec, "/dev/disk/by-partlabel/"):
		key, val = "PARTLABEL", unhex(strings.TrimPrefix(spec, "/dev/disk/by-partlabel/"))
	}
	val = strings.Trim(val, `"`)
	for _, p := range c.parts {
		f := p.fs
		switch key {
		case "UUID":
			if f.UUID != "" && strings.EqualFold(f.UUID, val) {
				return p, true
			}
		case "LABEL":
			if f.Label != "" && f.Label == val {
				return p, true
			}
		case "PARTUUID":
			if f.PartUUID != "" && strings.EqualFold(f.PartUUID, val) {
				return p, true
			}
		case "PARTLABEL":
			if f.PartLabel != "" && f.PartLabel == val {
				return p, true
			}
		}
	}
	switch key {
	case "UUID", "LABEL", "PARTUUID", "PARTLABEL":
		return nil, true
	}
	if kernelDevName(spec) {
		return nil, true
	}
	if strings.HasPrefix(spec, "/dev/mapper/") || strings.HasPrefix(spec, "/dev/md") || strings.HasPrefix(spec, "/dev/dm-") {
		for _, p := range c.parts {
			if t := p.fs.Type; t == "LVM2_member" || t == "linux_raid_member" || t == "crypto_LUKS" {
				return nil, false
			}
		}
		return nil, true
	}
	if strings.HasPrefix(spec, "/dev/") && strings.Count(spec, "/") == 3 { // /dev/vg/lv
		for _, p := range c.parts {
			if p.fs.Type == "LVM2_member" {
				return nil, false
			}
		}
	}
	return nil, false
}

func unhex(s string) string {
	return strings.NewReplacer(`\x20`, " ", `\x2f`, "/").Replace(s)
}

// kernelDevName tells whether spec is a disk by its kernel name
// (/dev/sda1, /dev/vdb, /dev/nvme0n1p2, /dev/hda1, /dev/xvda1).
func kernelDevName(spec string) bool {
	n, ok := strings.CutPrefix(spec, "/dev/")
	if !ok {
		return false
	}
	for _, p := range []string{"sd", "vd", "hd", "xvd"} {
		if rest, ok := strings.CutPrefix(n, p); ok && rest != "" && rest[0] >= 'a' && rest[0] <= 'z' {
			return true
		}
	}
	return strings.HasPrefix(n, "nvme") && strings.Contains(n, "n") && len(n) > 5
}

var pseudoFS = map[string]bool{
	"proc": true, "sysfs": true, "tmpfs": true, "devpts": true, "devtmpfs": true, "swap": false,
	"nfs": true, "nfs4": true, "cifs": true, "smbfs": true, "none": true, "bind": true, "efivarfs": true,
	"securityfs": true, "cgroup": true, "cgroup2": true, "debugfs": true, "hugetlbfs": true, "mqueue": true,
	"fuse": true, "9p": true, "virtiofs": true, "overlay": true, "ramfs": true, "configfs": true,
}

// fstab checks /etc/fstab and mounts /boot, /boot/efi, /efi and /usr.
func (c *checker) fstab() {
	const file = "/etc/fstab"
	b, err := c.tree.ReadFile(file, maxConfig)
	if err != nil {
		if !vfs.IsNotExist(err) {
			c.add(Note, job.CheckNotExamined, file, 0, file, err.Error())
		}
		return
	}
	for _, e := range config.ParseFstab(b) {
		if pseudoFS[e.Type] || e.HasOption("bind") || e.HasOption("_netdev") || !strings.Contains(e.Spec, "/") && !strings.Contains(e.Spec, "=") {
			continue
		}
		if kernelDevName(e.Spec) {
			c.add(Warn, job.CheckFstabDevName, file, e.Line, e.Line, e.Spec)
		}
		pt, known := c.resolveSpec(e.Spec)
		if pt != nil {
			switch e.File {
			case "/boot", "/boot/efi", "/efi", "/usr":
				if pt.drv != nil && pt != c.root {
					c.tree.Mount(e.File, pt.drv)
					pt.fs.Mount = e.File
				}
			case "/":
			default:
				if pt.fs.Mount == "" {
					pt.fs.Mount = e.File
				}
			}
			continue
		}
		if !known || e.HasOption("noauto") || e.Type == "swap" {
			continue // a missing swap delays the boot, it does not stop it
		}
		if e.HasOption("nofail") {
			c.add(Warn, job.CheckFstabUnresolved, file, e.Line, e.Line, e.Spec, e.File)
		} else {
			c.add(Warn, job.CheckFstabNoFail, file, e.Line, e.Line, e.Spec, e.File)
		}
	}
}
