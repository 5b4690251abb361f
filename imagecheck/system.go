package imagecheck

import (
	"fmt"
	"path"
	"regexp"
	"sort"
	"strings"

	"github.com/byoi/byoi/imagecheck/config"
	"github.com/byoi/byoi/imagecheck/vfs"
	"github.com/byoi/byoi/job"
)

// cloudInit checks, when a ConfigDrive is requested, that cloud-init is
// installed, enabled and allowed to read it.
func (c *checker) cloudInit() {
	if !c.facts.ConfigDrive {
		return
	}
	if !exists(c.tree, "/usr/bin/cloud-init") && !exists(c.tree, "/bin/cloud-init") {
		c.add(Warn, job.CheckCloudInitMissing, "/usr/bin/cloud-init", 0)
		return
	}
	if exists(c.tree, "/etc/cloud/cloud-init.disabled") {
		c.add(Warn, job.CheckCloudInitOff, "/etc/cloud/cloud-init.disabled", 0, "/etc/cloud/cloud-init.disabled exists")
	}
	if v, ok := config.Get(c.cmdline, "cloud-init"); ok && v == "disabled" {
		c.add(Warn, job.CheckCloudInitOff, c.rep.Kernel.Source, 0, "cloud-init=disabled on the kernel command line")
	}
	files := []string{"/etc/cloud/cloud.cfg"}
	if ents, err := c.tree.ReadDir("/etc/cloud/cloud.cfg.d", maxDir); err == nil {
		for _, e := range ents { // sorted by name: cloud-init's order
			if strings.HasSuffix(e.Name, ".cfg") {
				files = append(files, "/etc/cloud/cloud.cfg.d/"+e.Name)
			}
		}
	}
	var list []string
	from := ""
	for _, f := range files {
		b, err := c.tree.ReadFile(f, maxConfig)
		if err != nil {
			continue
		}
		if l, ok := config.DatasourceList(config.ParseYAML(b)); ok {
			list, from = l, f // a later file replaces the list
		}
	}
	if from == "" {
		return // the default list has ConfigDrive
	}
	for _, d := range list {
		if strings.EqualFold(d, "ConfigDrive") {
			return
		}
	}
	c.add(Warn, job.CheckDatasourceList, from, 0, "["+strings.Join(list, ", ")+"]")
}

var kernelIfName = regexp.MustCompile(`^eth[0-9]+$`)

type binding struct {
	config.Binding
	file string
}

// network checks the network configuration against the server's
// interfaces: kernel names under predictable naming, foreign MACs.
func (c *checker) network() {
	var bs []binding
	addAll := func(file string, l []config.Binding) {
		for _, b := range l {
			if len(bs) < 4096 {
				bs = append(bs, binding{b, file})
			}
		}
	}
	for _, f := range c.glob("/etc/netplan", "*.yaml") {
		if b, err := c.tree.ReadFile(f, maxConfig); err == nil {
			addAll(f, config.Netplan(config.ParseYAML(b)))
		}
	}
	queue, seen := []string{"/etc/network/interfaces"}, map[string]bool{}
	for len(queue) > 0 && len(seen) < 64 {
		f := queue[0]
		queue = queue[1:]
		if seen[f] {
			continue
		}
		seen[f] = true
		b, err := c.tree.ReadFile(f, maxConfig)
		if err != nil {
			continue
		}
		l, sources := config.Interfaces(b)
		addAll(f, l)
		for _, s := range sources {
			if !path.IsAbs(s) {
				s = path.Join("/etc/network", s)
			}
			queue = append(queue, c.glob(path.Dir(s), path.Base(s))...)
		}
	}
	for _, f := range c.glob("/etc/systemd/network", "*.network") {
		if b, err := c.tree.ReadFile(f, maxConfig); err == nil {
			addAll(f, config.Networkd(b))
		}
	}
	for _, f := range c.glob("/etc/systemd/network", "*.link") {
		if b, err := c.tree.ReadFile(f, maxConfig); err == nil {
			addAll(f, config.Networkd(b))
		}
	}
	for _, f := range c.glob("/etc/NetworkManager/system-connections", "*.nmconnection") {
		if b, err := c.tree.ReadFile(f, maxConfig); err == nil {
			addAll(f, config.NetworkManager(b))
		}
	}
	for _, f := range c.glob("/etc/sysconfig/network-scripts", "ifcfg-*") {
		if b, err := c.tree.ReadFile(f, maxConfig); err == nil {
			env := config.ParseEnv(b)
			bd := config.Binding{Name: strings.Trim(env["DEVICE"], `"'`), MAC: config.NormalizeMAC(env["HWADDR"])}
			if bd.Name == "lo" {
				continue
			}
			if bd.MAC != "" {
				bd.Name = ""
			}
			if bd.Name != "" || bd.MAC != "" {
				addAll(f, []config.Binding{bd})
			}
		}
	}
	const udevRules = "/etc/udev/rules.d/70-persistent-net.rules"
	if b, err := c.tree.ReadFile(udevRules, maxConfig); err == nil {
		addAll(udevRules, config.UdevNetRules(b))
	}

	macs := map[string]bool{}
	var macList []string
	for _, n := range c.facts.NICs {
		if m := config.NormalizeMAC(n.MAC); m != "" && !macs[m] {
			macs[m] = true
			macList = append(macList, m)
		}
	}
	sort.Strings(macList)
	// Names the image gives the server's interfaces itself.
	renamed := map[string]bool{}
	for _, b := range bs {
		if b.Rename != "" && (b.MAC == "" || len(macs) == 0 || macs[b.MAC]) {
			renamed[b.Rename] = true
		}
	}
	predictable := c.predictableNames()
	for _, b := range bs {
		where := b.file
		if b.Line > 0 {
			where = fmt.Sprintf("%s:%d", b.file, b.Line)
		}
		switch {
		case b.MAC != "":
			if len(macs) > 0 && !macs[b.MAC] {
				c.add(Warn, job.CheckNetForeignMAC, b.file, b.Line, where, b.MAC, strings.Join(macList, ", "))
			}
		case predictable && kernelIfName.MatchString(b.Name) && !renamed[b.Name]:
			c.add(Warn, job.CheckNetKernelName, b.file, b.Line, where, b.Name)
		}
	}
}

// predictableNames tells whether udev will rename the interfaces
// (enp1s0): its 80-net-setup-link.rules is there, not masked in /etc, and
// net.ifnames=0 is not on the kernel command line.
func (c *checker) predictableNames() bool {
	if v, ok := config.Get(c.cmdline, "net.ifnames"); ok && v == "0" {
		return false
	}
	if l, err := c.tree.Lstat("/etc/udev/rules.d/80-net-setup-link.rules"); err == nil {
		if l.Node.Type == vfs.TypeSymlink || l.Node.Size == 0 {
			return false // masked (a link to /dev/null, or empty)
		}
	}
	return exists(c.tree, "/usr/lib/udev/rules.d/80-net-setup-link.rules") || exists(c.tree, "/lib/udev/rules.d/80-net-setup-link.rules")
}

// glob lists the regular files of dir whose names match pattern.
func (c *checker) glob(dir, pattern string) []string {
	ents, err := c.tree.ReadDir(dir, maxDir)
	if err != nil {
		return nil
	}
	var out []string
	for _, e := range ents {
		if ok, _ := path.Match(pattern, e.Name); ok && e.Node.Type != vfs.TypeDir {
			out = append(out, path.Join(dir, e.Name))
		}
	}
	return out
}
