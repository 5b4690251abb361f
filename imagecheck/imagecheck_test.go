package imagecheck

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/byoi/byoi/configdrive"
	"github.com/byoi/byoi/imagecheck/internal/fixture"
	"github.com/byoi/byoi/imagecheck/vfs"
	"github.com/byoi/byoi/imagecheck/vfs/vfstest"
	"github.com/byoi/byoi/internal/testutil"
	"github.com/byoi/byoi/job"
)

const (
	kver     = "6.1.0-18-amd64"
	rootUUID = "0b5e2c3c-1111-4222-8333-444455556666"
	espPart  = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
	mac1     = "52:54:00:12:34:56"
)

// modules of the fake kernel: name -> its dependencies (compressed with
// xz, with zstd, and not at all, as kernels ship them).
var kernelModules = map[string][]string{
	"kernel/drivers/nvme/host/nvme.ko.xz":                   {"kernel/drivers/nvme/host/nvme-core.ko.zst"},
	"kernel/drivers/nvme/host/nvme-core.ko.zst":             nil,
	"kernel/fs/ext4/ext4.ko.xz":                             {"kernel/fs/mbcache.ko.xz", "kernel/fs/jbd2/jbd2.ko.xz"},
	"kernel/fs/mbcache.ko.xz":                               nil,
	"kernel/fs/jbd2/jbd2.ko.xz":                             nil,
	"kernel/fs/xfs/xfs.ko.xz":                               {"kernel/lib/libcrc32c.ko.xz"},
	"kernel/lib/libcrc32c.ko.xz":                            nil,
	"kernel/drivers/ata/ahci.ko.xz":                         {"kernel/drivers/ata/libahci.ko.xz"},
	"kernel/drivers/ata/libahci.ko.xz":                      nil,
	"kernel/drivers/scsi/sd_mod.ko":                         nil,
	"kernel/drivers/net/ethernet/intel/e1000e/e1000e.ko.xz": nil,
}

// debian is what a Debian-like image is made of; each field can be
// changed to make a defect.
type debian struct {
	fstab       string
	cmdline     string // after root=
	root        string // root= value
	grub        bool   // a grub.cfg (else only /boot/vmlinuz-*)
	noInitrdCfg bool   // the grub entry has no initrd line
	initrdMods  []string
	initrdComp  string
	noKernel    bool
	noInitrd    bool
	cloudInit   bool
	cloudCfgD   string // cloud.cfg.d/90_dpkg.cfg
	disabled    bool
	netplan     string
	interfaces  string
	xfs         bool
	files       map[string]string // more files of the root
}

func defaultDebian() debian {
	return debian{
		fstab: "UUID=" + rootUUID + " / ext4 errors=remount-ro 0 1\nUUID=1234-ABCD /boot/efi vfat umask=0077 0 1\n" +
			"tmpfs /tmp tmpfs defaults 0 0\n",
		root: "UUID=" + rootUUID, cmdline: "ro quiet", grub: true, initrdComp: "zstd", cloudInit: true,
		initrdMods: []string{"nvme", "nvme-core", "ext4", "mbcache", "jbd2", "xfs", "libcrc32c", "ahci", "libahci", "sd_mod"},
		cloudCfgD:  "datasource_list: [ NoCloud, ConfigDrive, OpenStack, None ]\n",
		netplan:    "network:\n  version: 2\n  ethernets:\n    all:\n      match:\n        name: en*\n      dhcp4: true\n",
	}
}

func (d debian) tree(t testing.TB) vfstest.Tree {
	tr := vfstest.Tree{
		"etc/fstab":      {Data: []byte(d.fstab)},
		"etc/os-release": {Data: []byte("ID=debian\n")},
		"lib":            {Link: "usr/lib"},
		"bin":            {Link: "usr/bin"},
		"sbin":           {Link: "usr/sbin"},
		"usr/lib/udev/rules.d/80-net-setup-link.rules": {Data: []byte("# predictable names\n")},
		"usr/sbin/init": {Data: []byte("#!")},
		"usr/lib/modules/" + kver + "/modules.builtin": {Data: []byte("kernel/drivers/ata/libata.ko\nkernel/drivers/scsi/scsi_mod.ko\nkernel/drivers/block/virtio_blk.ko\n")},
	}
	var dep strings.Builder
	for m, deps := range kernelModules {
		dep.WriteString(m + ":" + strings.Join(append([]string{""}, deps...), " ") + "\n")
		tr["usr/lib/modules/"+kver+"/"+m] = vfstest.Entry{Data: []byte("module")}
	}
	tr["usr/lib/modules/"+kver+"/modules.dep"] = vfstest.Entry{Data: []byte(dep.String())}
	if !d.noKernel {
		tr["boot/vmlinuz-"+kver] = vfstest.Entry{Data: bytes.Repeat([]byte("K"), 10000)}
		tr["vmlinuz"] = vfstest.Entry{Link: "boot/vmlinuz-" + kver}
	}
	if !d.noInitrd {
		files := map[string]string{"init": "#!/bin/sh", "usr/lib/modules/" + kver + "/modules.builtin": "x"}
		for _, m := range d.initrdMods {
			for path := range kernelModules {
				if normMod(path) == normMod(m) {
					files["usr/lib/modules/"+kver+"/"+path] = "module " + m
				}
			}
		}
		tr["boot/initrd.img-"+kver] = vfstest.Entry{Data: fixture.Initramfs(t, files, d.initrdComp)}
	}
	if d.grub {
		initrd := "\tinitrd\t/boot/initrd.img-" + kver + "\n"
		if d.noInitrdCfg {
			initrd = ""
		}
		tr["boot/grub/grub.cfg"] = vfstest.Entry{Data: []byte("set default=\"0\"\nmenuentry 'Debian GNU/Linux' --class debian {\n" +
			"\tlinux\t/boot/vmlinuz-" + kver + " root=" + d.root + " " + d.cmdline + "\n" + initrd + "}\n")}
	}
	if d.cloudInit {
		tr["usr/bin/cloud-init"] = vfstest.Entry{Data: []byte("#!/usr/bin/python3")}
		tr["etc/cloud/cloud.cfg"] = vfstest.Entry{Data: []byte("users:\n  - default\ndatasource_list: [ ConfigDrive ]\n")}
		tr["etc/cloud/cloud.cfg.d/90_dpkg.cfg"] = vfstest.Entry{Data: []byte(d.cloudCfgD)}
		if d.disabled {
			tr["etc/cloud/cloud-init.disabled"] = vfstest.Entry{Data: []byte{}}
		}
	}
	if d.netplan != "" {
		tr["etc/netplan/50-cloud-init.yaml"] = vfstest.Entry{Data: []byte(d.netplan)}
	}
	if d.interfaces != "" {
		tr["etc/network/interfaces"] = vfstest.Entry{Data: []byte("source /etc/network/interfaces.d/*\n")}
		tr["etc/network/interfaces.d/eth"] = vfstest.Entry{Data: []byte(d.interfaces)}
	}
	for p, c := range d.files {
		tr[p] = vfstest.Entry{Data: []byte(c)}
	}
	return tr
}

// disk builds the image: ESP (with the loaders), BIOS boot partition,
// root, boot code in the MBR, unless the options say otherwise.
type layout struct {
	noESP, noLoader, noBIOSBoot, noBootCode bool
	extra                                   []fixture.Part
	noRoot                                  bool
	rootGUID                                string // "" random
}

func build(t testing.TB, d debian, l layout) string {
	t.Helper()
	var parts []fixture.Part
	if !l.noESP {
		files := map[string]string{"EFI/debian/grubx64.efi": "grub", "EFI/BOOT/BOOTX64.EFI": "shim"}
		if l.noLoader {
			files = map[string]string{"EFI/debian/grub.cfg": "configfile"}
		}
		parts = append(parts, fixture.Part{Image: fixture.FAT(t, files, 33*1024), Type: "EF00", Name: "esp"})
	}
	if !l.noBIOSBoot {
		parts = append(parts, fixture.Part{SizeMiB: 1, Type: "EF02", Name: "bios"})
	}
	if !l.noRoot {
		var img string
		if d.xfs {
			img = fixture.XFS(t, d.tree(t), rootUUID, "root")
		} else {
			img = fixture.Ext4(t, d.tree(t), 48, rootUUID, "root")
		}
		parts = append(parts, fixture.Part{Image: img, Type: "8304", Name: "root", GUID: l.rootGUID})
	}
	parts = append(parts, l.extra...)
	return fixture.Disk(t, parts, !l.noBootCode)
}

var (
	seenMu sync.Mutex
	seen   = map[job.Code]string{}
	ran    = map[string]bool{} // the tests that ran to the end, for the coverage test
)

func check(t *testing.T, path string, facts Facts) *Report {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, _ := f.Stat()
	rep, err := Check(context.Background(), f, st.Size(), 512, facts, Options{})
	if err != nil {
		t.Fatal(err)
	}
	seenMu.Lock()
	for _, fd := range rep.Findings {
		seen[fd.Code] = t.Name()
	}
	seenMu.Unlock()
	return rep
}

func serverFacts() Facts {
	return Facts{BootMode: BootUEFI, DiskDrivers: []string{"nvme"}, ConfigDrive: true,
		NICs: []NIC{{Name: "eth0", MAC: mac1, Driver: "e1000e"}}}
}

// want checks that the report has exactly the findings of codes (with
// their severities).
func want(t *testing.T, rep *Report, codes map[job.Code]Severity) {
	t.Helper()
	got := map[job.Code]Severity{}
	for _, f := range rep.Findings {
		got[f.Code] = f.Severity
	}
	for c, s := range codes {
		if got[c] != s {
			t.Errorf("want %s %s, got %q", s, c, got[c])
		}
	}
	for _, f := range rep.Findings {
		if _, ok := codes[f.Code]; !ok {
			t.Errorf("unexpected %s", f)
		}
	}
	if t.Failed() {
		b, _ := json.MarshalIndent(rep, "", " ")
		t.Logf("report: %s", b)
	}
}

func TestDebianPasses(t *testing.T) {
	defer func() { ran[t.Name()] = !t.Failed() || ran[t.Name()] }()
	img := build(t, defaultDebian(), layout{})
	for _, facts := range []Facts{serverFacts(), {BootMode: BootLegacy, DiskDrivers: []string{"ahci"}, ConfigDrive: true}, {}} {
		rep := check(t, img, facts)
		want(t, rep, nil)
		if rep.Kernel == nil || rep.Kernel.Version != kver || len(rep.Kernel.InitrdSegments) != 2 || rep.Kernel.InitrdSegments[1] != "zstd" {
			t.Errorf("kernel %+v", rep.Kernel)
		}
		var mounts []string
		for _, fs := range rep.Filesystems {
			mounts = append(mounts, fs.Mount)
		}
		if strings.Join(mounts, ",") != "/boot/efi,,/" {
			t.Errorf("mounts %q (%+v)", mounts, rep.Filesystems)
		}
	}
}

func TestXFSRoot(t *testing.T) {
	defer func() { ran[t.Name()] = !t.Failed() || ran[t.Name()] }()
	d := defaultDebian()
	d.xfs = true
	d.fstab = "UUID=" + rootUUID + " / xfs defaults 0 1\n"
	d.initrdComp = "xz"
	want(t, check(t, build(t, d, layout{}), serverFacts()), nil)
	d.initrdMods = []string{"nvme", "nvme-core"}
	d.initrdComp = "gzip"
	want(t, check(t, build(t, d, layout{}), serverFacts()), map[job.Code]Severity{job.CheckRootFSModule: Refuse})
}

func TestDefects(t *testing.T) {
	defer func() { ran[t.Name()] = !t.Failed() || ran[t.Name()] }()
	// byoi's own ConfigDrive, as the raw and OVA checks see it after the
	// write.
	cd, err := configdrive.Build(context.Background(), configdrive.Content{UUID: configdrive.DeriveUUID("t"), Hostname: "h"}, configdrive.ISO9660)
	if err != nil {
		t.Fatal(err)
	}
	// Where the findings must be, for the cases that say it: every
	// finding's "code file", sorted.
	where := map[string][]string{
		"networkd, NetworkManager, udev and ifcfg bindings": {
			"CheckNetForeignMAC /etc/NetworkManager/system-connections/foreign-mac.nmconnection",
			"CheckNetForeignMAC /etc/systemd/network/10-lan.network",
			"CheckNetKernelName /etc/NetworkManager/system-connections/eth1.nmconnection",
			"CheckNetKernelName /etc/sysconfig/network-scripts/ifcfg-eth2",
		},
		"fstab": {"CheckFstabDevName /etc/fstab", "CheckFstabNoFail /etc/fstab", "CheckFstabUnresolved /etc/fstab"},
	}
	for _, tc := range []struct {
		name  string
		mod   func(*debian, *layout, *Facts)
		codes map[job.Code]Severity
	}{
		{"fstab", func(d *debian, _ *layout, _ *Facts) {
			d.fstab += "/dev/vdb1 /srv ext4 defaults 0 2\nLABEL=data /data xfs defaults,nofail 0 2\nUUID=0000 none swap sw 0 0\n"
		}, map[job.Code]Severity{job.CheckFstabDevName: Warn, job.CheckFstabNoFail: Warn, job.CheckFstabUnresolved: Warn}},
		{"no nvme in the initramfs", func(d *debian, _ *layout, _ *Facts) {
			d.initrdMods = []string{"ext4", "mbcache", "jbd2"}
			d.initrdComp = "lz4"
		}, map[job.Code]Severity{job.CheckDiskDriverAbsent: Refuse}},
		{"no nvme-core", func(d *debian, _ *layout, _ *Facts) {
			d.initrdMods = []string{"nvme", "ext4", "mbcache", "jbd2"}
			d.initrdComp = "gzip"
		}, map[job.Code]Severity{job.CheckModuleDepAbsent: Refuse}},
		{"ahci without sd_mod", func(d *debian, _ *layout, f *Facts) {
			d.initrdMods = []string{"ahci", "libahci", "ext4", "mbcache", "jbd2"}
			f.DiskDrivers = []string{"ahci"}
		}, map[job.Code]Severity{job.CheckDiskDriverAbsent: Refuse}},
		{"datasource NoCloud", func(d *debian, _ *layout, _ *Facts) {
			d.cloudCfgD = "datasource_list: [ NoCloud ]\n"
		}, map[job.Code]Severity{job.CheckDatasourceList: Warn}},
		{"no cloud-init", func(d *debian, _ *layout, _ *Facts) { d.cloudInit = false },
			map[job.Code]Severity{job.CheckCloudInitMissing: Warn}},
		{"cloud-init disabled", func(d *debian, _ *layout, _ *Facts) { d.disabled = true; d.cmdline += " cloud-init=disabled" },
			map[job.Code]Severity{job.CheckCloudInitOff: Warn}},
		{"root= unresolved", func(d *debian, _ *layout, _ *Facts) { d.root = "UUID=deadbeef-0000-0000-0000-000000000000" },
			map[job.Code]Severity{job.CheckRootUnresolved: Refuse}},
		{"root= kernel name", func(d *debian, _ *layout, _ *Facts) { d.root = "/dev/sda1" },
			map[job.Code]Severity{job.CheckRootDevName: Warn}},
		{"kernel missing", func(d *debian, _ *layout, _ *Facts) { d.noKernel = true },
			map[job.Code]Severity{job.CheckKernelMissing: Refuse}},
		{"initrd missing", func(d *debian, _ *layout, _ *Facts) { d.noInitrd = true },
			map[job.Code]Severity{job.CheckInitrdMissing: Refuse}},
		{"no kernel at all", func(d *debian, _ *layout, _ *Facts) { d.noKernel, d.grub = true, false },
			map[job.Code]Severity{job.CheckNoKernel: Warn}},
		{"no initrd line", func(d *debian, _ *layout, _ *Facts) { d.noInitrdCfg = true },
			map[job.Code]Severity{job.CheckNoInitramfs: Refuse}},
		{"no grub.cfg: newest /boot/vmlinuz", func(d *debian, _ *layout, _ *Facts) { d.grub = false }, nil},
		{"NIC driver absent", func(_ *debian, _ *layout, f *Facts) {
			f.NICs = append(f.NICs, NIC{MAC: "52:54:00:00:00:02", Driver: "mlx5_core"})
		},
			map[job.Code]Severity{job.CheckNICDriverAbsent: Warn}},
		{"netplan eth0 and a foreign MAC", func(d *debian, _ *layout, _ *Facts) {
			d.netplan = "network:\n  ethernets:\n    eth0:\n      dhcp4: true\n    lan:\n      match:\n        macaddress: 52:54:00:99:99:99\n"
			d.interfaces = "auto eth1\niface eth1 inet dhcp\n"
		}, map[job.Code]Severity{job.CheckNetKernelName: Warn, job.CheckNetForeignMAC: Warn}},
		{"eth0 with net.ifnames=0", func(d *debian, _ *layout, _ *Facts) {
			d.netplan = "network:\n  ethernets:\n    eth0:\n      dhcp4: true\n"
			d.cmdline += " net.ifnames=0"
		}, nil},
		{"every way to name a filesystem resolves", func(d *debian, l *layout, _ *Facts) {
			l.rootGUID = "6a3f0c52-9d1e-4b7a-8c2d-1e2f3a4b5c6d"
			d.root = "PARTUUID=6A3F0C52-9D1E-4B7A-8C2D-1E2F3A4B5C6D"
			d.fstab = "LABEL=root / ext4 defaults 0 1\nPARTLABEL=esp /boot/efi vfat umask=0077 0 1\n" +
				"/dev/disk/by-uuid/" + rootUUID + " /mnt/again ext4 defaults 0 2\n/dev/disk/by-partuuid/" + l.rootGUID + " /mnt/more ext4 defaults 0 2\n" +
				"/dev/disk/by-label/ESP /mnt/esp vfat defaults 0 2\n"
		}, nil},
		{"a built-in disk driver needs nothing in the initramfs", func(d *debian, _ *layout, f *Facts) {
			d.initrdMods = []string{"ext4", "mbcache", "jbd2"}
			f.DiskDrivers = []string{"virtio-blk"}
		}, nil},
		{"networkd, NetworkManager, udev and ifcfg bindings", func(d *debian, _ *layout, f *Facts) {
			d.netplan = ""
			d.files = map[string]string{
				"etc/systemd/network/10-lan.network":                             "[Match]\nMACAddress=52:54:00:aa:bb:cc\n[Network]\nDHCP=yes\n",
				"etc/systemd/network/20-mine.network":                            "[Match]\nMACAddress=" + mac1 + "\n[Network]\nDHCP=yes\n",
				"etc/NetworkManager/system-connections/eth1.nmconnection":        "[connection]\nid=eth1\ntype=ethernet\ninterface-name=eth1\n",
				"etc/udev/rules.d/70-persistent-net.rules":                       `SUBSYSTEM=="net", ACTION=="add", ATTR{address}=="` + mac1 + `", NAME="eth0"` + "\n",
				"etc/systemd/network/eth0.network":                               "[Match]\nName=eth0\n[Network]\nDHCP=yes\n",
				"etc/sysconfig/network-scripts/ifcfg-eth2":                       "DEVICE=eth2\nBOOTPROTO=dhcp\n",
				"etc/sysconfig/network-scripts/ifcfg-lo":                         "DEVICE=lo\n",
				"etc/NetworkManager/system-connections/by-mac.nmconnection":      "[connection]\nid=m\ntype=ethernet\n[ethernet]\nmac-address=" + mac1 + "\n",
				"etc/NetworkManager/system-connections/foreign-mac.nmconnection": "[connection]\nid=f\ntype=ethernet\n[ethernet]\nmac-address=52:54:00:DD:EE:FF\n",
			}
		}, map[job.Code]Severity{job.CheckNetKernelName: Warn, job.CheckNetForeignMAC: Warn}},
		{"BIOS-only image on UEFI", func(_ *debian, l *layout, _ *Facts) { l.noESP = true },
			map[job.Code]Severity{job.CheckUEFINoESP: Refuse, job.CheckFstabNoFail: Warn}},
		{"ESP without a loader", func(_ *debian, l *layout, _ *Facts) { l.noLoader = true },
			map[job.Code]Severity{job.CheckUEFINoLoader: Refuse}},
		{"efiBootloaderPath absent", func(_ *debian, _ *layout, f *Facts) { f.EFIBootloaderPath = `\EFI\other\shimx64.efi` },
			map[job.Code]Severity{job.CheckUEFINoLoader: Refuse}},
		{"UEFI-only image on BIOS", func(_ *debian, l *layout, f *Facts) { l.noBootCode, f.BootMode = true, BootLegacy },
			map[job.Code]Severity{job.CheckBIOSNoBootCode: Refuse}},
		{"GPT boot code, no BIOS boot partition", func(_ *debian, l *layout, f *Facts) { l.noBIOSBoot, f.BootMode = true, BootLegacy },
			map[job.Code]Severity{job.CheckBIOSNoCoreSpace: Warn}},
		{"btrfs data partition", func(_ *debian, l *layout, _ *Facts) {
			sb := make([]byte, 0x10100)
			copy(sb[0x10040:], "_BHRfS_M")
			l.extra = []fixture.Part{{Raw: sb, SizeMiB: 2, Type: "8300", Name: "data"}}
		}, map[job.Code]Severity{job.CheckNotExamined: Note}},
		{"byoi's ConfigDrive after the write", func(_ *debian, l *layout, _ *Facts) {
			l.extra = []fixture.Part{{Raw: cd, SizeMiB: 2, Type: "0700", Name: "config-2"}}
		}, nil},
		{"another ISO 9660 partition", func(_ *debian, l *layout, _ *Facts) {
			cd := bytes.Clone(cd)
			copy(cd[0x8028:0x8048], bytes.Repeat([]byte(" "), 32))
			copy(cd[0x8028:], "INSTALLER")
			l.extra = []fixture.Part{{Raw: cd, SizeMiB: 2, Type: "0700", Name: "cd"}}
		}, map[job.Code]Severity{job.CheckNotExamined: Note}},
		{"no Linux root", func(_ *debian, l *layout, _ *Facts) { l.noRoot = true },
			map[job.Code]Severity{job.CheckNoLinuxRoot: Note}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			d, l, f := defaultDebian(), layout{}, serverFacts()
			tc.mod(&d, &l, &f)
			rep := check(t, build(t, d, l), f)
			want(t, rep, tc.codes)
			if w := where[tc.name]; w != nil {
				var got []string
				for _, fd := range rep.Findings {
					got = append(got, string(fd.Code)+" "+fd.File)
				}
				sort.Strings(got)
				if strings.Join(got, "\n") != strings.Join(w, "\n") {
					t.Errorf("findings at\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(w, "\n"))
				}
			}
			for _, fd := range rep.Findings {
				if fd.Message == "" || strings.Contains(fd.Message, "%!") {
					t.Errorf("bad message %q", fd.Message)
				}
			}
		})
	}
}

// TestCatalogCoverage: every code of issue 26 is triggered by the tests
// above (run with them).
func TestCatalogCoverage(t *testing.T) {
	if len(ran) < 3 {
		t.Skip("needs TestDebianPasses, TestXFSRoot and TestDefects to have run")
	}
	for _, c := range job.Codes() {
		if _, ok := seen[c]; job.IsImageCheckCode(c) && !ok {
			t.Errorf("code %s is never triggered", c)
		}
	}
}

func TestCheckHead(t *testing.T) {
	img := build(t, defaultDebian(), layout{noESP: true, noBootCode: true})
	head := testutil.ReadAt(t, img, 0, 1<<20)
	fs, err := CheckHead(head, 512, Facts{BootMode: BootUEFI})
	if err != nil || len(fs) != 1 || fs[0].Code != job.CheckUEFINoESP || fs[0].Severity != Refuse {
		t.Errorf("uefi: %v %v", fs, err)
	}
	fs, _ = CheckHead(head, 512, Facts{BootMode: BootLegacy})
	if len(fs) != 1 || fs[0].Code != job.CheckBIOSNoBootCode {
		t.Errorf("legacy: %v", fs)
	}
	good := testutil.ReadAt(t, build(t, defaultDebian(), layout{}), 0, 1<<20)
	if fs, err := CheckHead(good, 512, Facts{BootMode: BootUEFI}); err != nil || len(fs) != 0 {
		t.Errorf("good: %v %v", fs, err)
	}
}

// countingReader counts reads, as an HTTP Range reader would count
// requests.
type countingReader struct {
	f            *os.File
	reads, bytes int
}

func (c *countingReader) ReadAt(p []byte, off int64) (int, error) {
	c.reads++
	c.bytes += len(p)
	return c.f.ReadAt(p, off)
}

func TestReadsAndLimits(t *testing.T) {
	img := build(t, defaultDebian(), layout{})
	f, err := os.Open(img)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, _ := f.Stat()
	cr := &countingReader{f: f}
	rep, err := Check(context.Background(), cr, st.Size(), 512, serverFacts(), Options{})
	if err != nil || len(rep.Findings) != 0 {
		t.Fatalf("%v %v", rep, err)
	}
	if cr.reads != rep.Reads || cr.reads > 200 || int64(cr.bytes) != rep.BytesRead || rep.BytesRead > st.Size()/4 {
		t.Errorf("%d reads, %d bytes of a %d-byte image (report: %d, %d)", cr.reads, cr.bytes, st.Size(), rep.Reads, rep.BytesRead)
	}
	t.Logf("%d reads, %d KiB of %d MiB, %v", cr.reads, cr.bytes>>10, st.Size()>>20, rep.Duration)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := Check(ctx, f, st.Size(), 512, serverFacts(), Options{}); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled: %v", err)
	}
	// A source that hangs is stopped by the timeout.
	slow := slowReader{f}
	if _, err := Check(context.Background(), slow, st.Size(), 512, serverFacts(), Options{Timeout: 300 * time.Millisecond}); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("slow source: %v", err)
	}
	// Small budgets: what cannot be read is a note, never a refusal.
	for budget := int64(256 << 10); budget <= 2<<20; budget += 128 << 10 {
		rep, err = Check(context.Background(), f, st.Size(), 512, serverFacts(), Options{Limits: vfs.Limits{MaxBytes: budget}})
		if err != nil || len(rep.Refusals()) != 0 || len(rep.Warnings()) != 0 || rep.BytesRead > budget {
			t.Errorf("budget %d: %v %v", budget, rep.Findings, err)
		}
	}
	if _, err := Check(context.Background(), f, st.Size(), 3, Facts{}, Options{}); err == nil {
		t.Error("bad sector size accepted")
	}
}

type slowReader struct{ f *os.File }

func (s slowReader) ReadAt(p []byte, off int64) (int, error) {
	time.Sleep(100 * time.Millisecond)
	return s.f.ReadAt(p, off)
}

// FuzzCheck runs the checks on arbitrary disk bytes.
func FuzzCheck(f *testing.F) {
	if _, err := testutil.LookPath("sgdisk"); err == nil {
		if _, err := testutil.LookPath("mke2fs"); err == nil {
			tr := vfstest.Tree{
				"etc/fstab":                                    {Data: []byte("UUID=" + rootUUID + " / ext4 defaults 0 1\n/dev/sdb1 /x ext4 defaults 0 0\n")},
				"lib":                                          {Link: "usr/lib"},
				"boot/grub/grub.cfg":                           {Data: []byte("menuentry 'x' {\n linux /boot/vmlinuz-1 root=UUID=" + rootUUID + "\n initrd /boot/initrd.img-1\n}\n")},
				"boot/vmlinuz-1":                               {Data: []byte("k")},
				"boot/initrd.img-1":                            {Data: fixture.Initramfs(f, map[string]string{"usr/lib/modules/1/kernel/nvme.ko": "n"}, "gzip")},
				"boot/grub/grubenv":                            {Data: []byte("# GRUB Environment Block\nsaved_entry=1\n")},
				"boot/loader/entries/1.conf":                   {Data: []byte("title x\nversion 1\nlinux /vmlinuz-1\ninitrd /initrd.img-1\noptions root=UUID=" + rootUUID + "\n")},
				"usr/lib/modules/1/modules.dep":                {Data: []byte("kernel/nvme.ko: kernel/nvme-core.ko\nkernel/nvme-core.ko:\n")},
				"usr/lib/modules/1/modules.builtin":            {Data: []byte("kernel/ext4.ko\n")},
				"usr/bin/cloud-init":                           {Data: []byte("#!")},
				"etc/cloud/cloud.cfg":                          {Data: []byte("datasource_list: [ NoCloud ]\n")},
				"etc/netplan/a.yaml":                           {Data: []byte("network:\n ethernets:\n  eth0: {}\n  x:\n   match: {macaddress: 02:00:00:00:00:01}\n")},
				"etc/network/interfaces":                       {Data: []byte("source interfaces.d/*\nauto eth1\niface eth1 inet dhcp\n")},
				"usr/lib/udev/rules.d/80-net-setup-link.rules": {Data: []byte("#")},
			}
			img := fixture.Disk(f, []fixture.Part{{Image: fixture.Ext4(f, tr, 2, rootUUID, "r"), Type: "8304", Name: "root"}}, true)
			b, err := os.ReadFile(img)
			if err != nil {
				f.Fatal(err)
			}
			// The seed reaches every check (an fstab, a BLS entry and its
			// initramfs, cloud-init, the network).
			rep, err := Check(context.Background(), bytes.NewReader(b[:3<<20]), 3<<20, 512, serverFacts(), Options{})
			if err != nil {
				f.Fatal(err)
			}
			got := map[job.Code]bool{}
			for _, fd := range rep.Findings {
				got[fd.Code] = true
			}
			for _, c := range []job.Code{job.CheckFstabDevName, job.CheckUEFINoESP, job.CheckDatasourceList, job.CheckNetKernelName, job.CheckNetForeignMAC} {
				if !got[c] {
					f.Errorf("the seed gives no %s: %v", c, rep.Findings)
				}
			}
			if rep.Kernel == nil || len(rep.Kernel.InitrdSegments) != 2 {
				f.Errorf("the seed's kernel: %+v", rep.Kernel)
			}
			f.Add(b[:3<<20])
		}
	}
	f.Add(make([]byte, 4096))
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) < 1024 {
			return
		}
		Check(context.Background(), bytes.NewReader(b), int64(len(b)), 512, serverFacts(), Options{Limits: vfsLimits()})
	})
}

func vfsLimits() vfs.Limits { return vfs.Limits{MaxBytes: 32 << 20} }
