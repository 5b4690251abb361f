package imagecheck

import (
	"bufio"
	"bytes"
	"fmt"
	"path"
	"regexp"
	"strings"

	"github.com/byoi/byoi/imagecheck/config"
	"github.com/byoi/byoi/imagecheck/initramfs"
	"github.com/byoi/byoi/imagecheck/vfs"
	"github.com/byoi/byoi/job"
)

// place is a filesystem's tree and the path it is mounted at in it: boot
// entries name files relative to the filesystem that holds them.
type place struct {
	tree *vfs.Tree
	base string
}

func (p place) path(f string) string {
	if i := strings.IndexByte(f, ')'); strings.HasPrefix(f, "(") && i > 0 {
		f = f[i+1:] // GRUB's (hd0,gpt2)/vmlinuz or ($root)/vmlinuz
	}
	return path.Join(p.base, "/", f)
}

// bootPlace is where /boot's own filesystem sits.
func (c *checker) bootPlace() place {
	if c.tree.MountedAt("/boot") != nil {
		return place{c.tree, "/boot"}
	}
	return place{c.tree, "/"}
}

type entry struct {
	at      place
	source  string // a file (in the root tree's paths) or "partition N:/path"
	line    int
	linux   string
	initrds []string
	args    string
	version string
}

// bootEntry finds the default boot entry: grub.cfg's (or the BLS entries
// it loads), systemd-boot's BLS entries, else the newest /boot/vmlinuz-*.
func (c *checker) bootEntry() *entry {
	bp := c.bootPlace()
	env := map[string]string{}
	for _, g := range []string{"/boot/grub/grubenv", "/boot/grub2/grubenv"} {
		if b, err := c.tree.ReadFile(g, 64<<10); err == nil {
			env = config.ParseEnv(b)
			break
		}
	}
	for _, g := range []string{"/boot/grub/grub.cfg", "/boot/grub2/grub.cfg"} {
		b, err := c.tree.ReadFile(g, 4<<20)
		if err != nil {
			if !vfs.IsNotExist(err) {
				c.add(Note, job.CheckNotExamined, g, 0, g, err.Error())
			}
			continue
		}
		cfg := config.ParseGrub(b)
		if cfg.BLS {
			if e := c.blsEntry(bp, bp.path("loader/entries"), env); e != nil {
				return e
			}
		}
		if ge := cfg.DefaultEntry(env); ge != nil && ge.Linux != "" {
			return &entry{at: bp, source: g, line: ge.Line, linux: ge.Linux, initrds: ge.Initrds, args: ge.Args}
		}
	}
	for _, dir := range []string{"/boot/loader/entries", "/efi/loader/entries", "/boot/efi/loader/entries"} {
		at := place{c.tree, strings.TrimSuffix(dir, "/loader/entries")}
		if e := c.blsEntry(at, dir, env); e != nil {
			return e
		}
	}
	if c.esp != nil && c.esp.drv != nil {
		et := place{vfs.NewTree(c.esp.drv), "/"}
		if e := c.blsEntry(et, "/loader/entries", env); e != nil {
			e.source = fmt.Sprintf("partition %d:%s", c.esp.p.Number, e.source)
			return e
		}
	}
	// No configuration: the newest kernel in /boot.
	ents, err := c.tree.ReadDir("/boot", maxDir)
	if err != nil {
		return nil
	}
	var best string
	for _, e := range ents {
		if v, ok := strings.CutPrefix(e.Name, "vmlinuz-"); ok && (best == "" || config.VersionCompare(v, best) > 0) {
			best = v
		}
	}
	if best == "" {
		return nil
	}
	e := &entry{at: place{c.tree, "/"}, source: "/boot", linux: "/boot/vmlinuz-" + best, version: best}
	for _, n := range []string{"initrd.img-" + best, "initramfs-" + best + ".img"} {
		if exists(c.tree, "/boot/"+n) {
			e.initrds = []string{"/boot/" + n}
		}
	}
	return e
}

// blsEntry reads the BLS entries of dir and returns the default one:
// grubenv's saved_entry, else the newest.
func (c *checker) blsEntry(at place, dir string, env map[string]string) *entry {
	ents, err := at.tree.ReadDir(dir, maxDir)
	if err != nil {
		return nil
	}
	var es []config.BLSEntry
	for _, d := range ents {
		if !strings.HasSuffix(d.Name, ".conf") || d.Node.Type != vfs.TypeRegular {
			continue
		}
		b, err := at.tree.ReadFile(path.Join(dir, d.Name), 64<<10)
		if err != nil {
			continue
		}
		es = append(es, config.ParseBLS(strings.TrimSuffix(d.Name, ".conf"), b))
	}
	if len(es) == 0 {
		return nil
	}
	config.SortBLS(es)
	pick := es[0]
	for _, e := range es {
		if s := env["saved_entry"]; s != "" && e.ID == s {
			pick = e
		}
	}
	args := strings.ReplaceAll(pick.Options, "$kernelopts", env["kernelopts"])
	return &entry{at: at, source: path.Join(dir, pick.ID+".conf"), line: pick.LinuxLine, linux: pick.Linux, initrds: pick.Initrds, args: args, version: pick.Version}
}

var kernelName = regexp.MustCompile(`^(?:vmlinuz|vmlinux|linux|kernel)-(.+)$`)

// kernel checks the default boot entry: its kernel and initramfs, root=,
// and the drivers the server needs.
func (c *checker) kernel() {
	e := c.bootEntry()
	if e == nil {
		c.add(Warn, job.CheckNoKernel, "/boot", 0)
		return
	}
	k := &Kernel{Source: e.source, Path: e.at.path(e.linux), Cmdline: e.args}
	c.rep.Kernel = k
	if m := kernelName.FindStringSubmatch(path.Base(e.linux)); m != nil {
		k.Version = m[1]
	}
	if k.Version == "" && e.version != "" && exists(c.tree, "/lib/modules/"+e.version) {
		k.Version = e.version
	}
	if k.Version == "" {
		if ds, err := c.tree.ReadDir("/lib/modules", 16); err == nil && len(ds) == 1 {
			k.Version = ds[0].Name
		}
	}
	c.kver = k.Version
	if ok, err := e.at.tree.Exists(k.Path); err != nil {
		c.add(Note, job.CheckNotExamined, e.source, e.line, k.Path, err.Error())
		return
	} else if !ok {
		c.add(Refuse, job.CheckKernelMissing, e.source, e.line, e.linux)
		return
	}
	var initrds []string
	for _, i := range e.initrds {
		p := e.at.path(i)
		if ok, err := e.at.tree.Exists(p); err != nil {
			c.add(Note, job.CheckNotExamined, e.source, e.line, p, err.Error())
			return
		} else if !ok {
			c.add(Refuse, job.CheckInitrdMissing, e.source, e.line, i)
			return
		}
		initrds = append(initrds, p)
	}
	k.Initrds = initrds
	c.cmdline = config.ParseCmdline(e.args)
	if root, ok := config.Get(c.cmdline, "root"); ok && root != "" {
		if kernelDevName(root) {
			c.add(Warn, job.CheckRootDevName, e.source, e.line, root)
		} else if pt, known := c.resolveSpec(root); pt == nil && known {
			c.add(Refuse, job.CheckRootUnresolved, e.source, e.line, root)
		}
	}
	c.modules(e, k)
}

// modinfo is what /lib/modules/VERSION says of the kernel's modules.
type modinfo struct {
	loaded  bool                // modules.dep was read
	builtin map[string]bool     // modules.builtin
	deps    map[string][]string // module -> the modules it needs (modules.dep)
}

func (c *checker) readModinfo(ver string) modinfo {
	mi := modinfo{builtin: map[string]bool{}, deps: map[string][]string{}}
	dir := "/lib/modules/" + ver
	if b, err := c.tree.ReadFile(dir+"/modules.builtin", 4<<20); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if l = strings.TrimSpace(l); l != "" {
				mi.builtin[normMod(l)] = true
			}
		}
	}
	b, err := c.tree.ReadFile(dir+"/modules.dep", 32<<20)
	if err != nil {
		c.add(Note, job.CheckNotExamined, dir+"/modules.dep", 0, dir+"/modules.dep", err.Error())
		return mi
	}
	mi.loaded = true
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		mod, deps, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		var ds []string
		for _, d := range strings.Fields(deps) {
			ds = append(ds, normMod(d))
		}
		mi.deps[normMod(mod)] = ds
	}
	return mi
}

// closure is m's dependencies, transitively (bounded).
func (mi modinfo) closure(m string) []string {
	seen := map[string]bool{m: true}
	var out []string
	queue := []string{m}
	for len(queue) > 0 && len(out) < 256 {
		x := queue[0]
		queue = queue[1:]
		for _, d := range mi.deps[x] {
			if !seen[d] {
				seen[d], out = true, append(out, d)
				queue = append(queue, d)
			}
		}
	}
	return out
}

// noSCSI are disk drivers whose disks are not SCSI disks (no sd_mod).
var noSCSI = map[string]bool{"nvme": true, "virtio_blk": true, "xen_blkfront": true, "mmc_block": true, "sdhci_pci": true, "sdhci_acpi": true, "virtio_pci": true, "nvme_core": true}

func (c *checker) modules(e *entry, k *Kernel) {
	ver := k.Version
	if ver == "" {
		c.add(Note, job.CheckNotExamined, e.source, e.line, "the kernel's modules", "the kernel version is unknown")
		return
	}
	mi := c.readModinfo(ver)
	type need struct {
		mod, fstype string
	}
	var needs []need
	scsi := false
	for _, d := range c.facts.DiskDrivers {
		m := normMod(d)
		if m == "" {
			continue
		}
		needs = append(needs, need{mod: m})
		if !noSCSI[m] {
			scsi = true
		}
	}
	if scsi {
		needs = append(needs, need{mod: "sd_mod"})
	}
	switch c.root.fs.Type {
	case "ext2", "ext3", "ext4":
		needs = append(needs, need{mod: "ext4", fstype: c.root.fs.Type})
	case "xfs":
		needs = append(needs, need{mod: "xfs", fstype: "xfs"})
	}
	// The initramfs: which modules of this kernel it holds.
	want := map[string]bool{}
	for _, n := range needs {
		if !mi.builtin[n.mod] {
			want[n.mod] = true
		}
		for _, d := range mi.closure(n.mod) {
			if !mi.builtin[d] {
				want[d] = true
			}
		}
	}
	have := map[string]bool{}
	initrd := ""
	if len(k.Initrds) > 0 {
		initrd = k.Initrds[len(k.Initrds)-1]
	}
	readable := true
	if len(want) > 0 {
		for _, p := range k.Initrds {
			l, err := e.at.tree.Stat(p)
			if err == nil {
				var info *initramfs.Info
				info, err = initramfs.Walk(vfs.Open(l), initramfs.Limits{}, func(en initramfs.Entry) bool {
					if !strings.Contains(en.Name, "lib/modules/"+ver+"/") || !strings.Contains(en.Name, ".ko") {
						return false
					}
					m := normMod(en.Name)
					if want[m] && !have[m] {
						have[m] = true
						return len(have) == len(want) // all found: stop reading
					}
					return false
				})
				if info != nil {
					k.InitrdSegments = append(k.InitrdSegments, info.Segments...)
				}
			}
			if err != nil && len(have) < len(want) {
				c.add(Note, job.CheckNotExamined, p, 0, p, err.Error())
				readable = false
			}
		}
	}
	absent := func(m string) bool { return !mi.builtin[m] && !have[m] }
	sev := func(m string) Severity {
		// Certain only when the kernel has the module as a loadable one.
		if _, ok := mi.deps[m]; ok && readable {
			return Refuse
		}
		return Warn
	}
	for _, n := range needs {
		if initrd == "" {
			if absent(n.mod) {
				c.add(sev(n.mod), job.CheckNoInitramfs, e.source, e.line, n.mod, ver)
			}
			continue
		}
		if !readable {
			continue
		}
		switch {
		case absent(n.mod) && n.fstype != "":
			c.add(sev(n.mod), job.CheckRootFSModule, initrd, 0, initrd, n.mod, n.fstype, ver)
		case absent(n.mod):
			c.add(sev(n.mod), job.CheckDiskDriverAbsent, initrd, 0, initrd, n.mod, ver)
		default:
			for _, d := range mi.closure(n.mod) {
				if absent(d) {
					c.add(sev(d), job.CheckModuleDepAbsent, initrd, 0, initrd, d, n.mod, ver)
				}
			}
		}
	}
	// The NICs' drivers load from the root filesystem after switch_root.
	if !mi.loaded {
		return
	}
	for _, nic := range c.facts.NICs {
		m := normMod(nic.Driver)
		if m == "" || mi.builtin[m] {
			continue
		}
		if _, ok := mi.deps[m]; !ok {
			name := strings.TrimSpace(nic.Name + " " + nic.MAC)
			if name == "" {
				name = "?"
			}
			c.add(Warn, job.CheckNICDriverAbsent, "/lib/modules/"+ver, 0, m, name, ver)
		}
	}
}
