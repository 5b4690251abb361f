package drivers

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// The index of the modules the rescue ships: modules.alias and modules.dep
// as depmod -b wrote them for rescue/build.sh's tree (Debian's
// linux-image-6.1.0-57-amd64 6.1.192-3, rescue/modules.txt), and the
// kernel's modules.builtin.
func realIndex(t *testing.T) (*Aliases, *Modules) {
	t.Helper()
	al, mods, err := Index("testdata")
	if err != nil {
		t.Fatal(err)
	}
	if al.Len() < 1000 || len(mods.Path) < 100 {
		t.Fatalf("testdata index: %d aliases, %d modules", al.Len(), len(mods.Path))
	}
	return al, mods
}

func TestGlob(t *testing.T) {
	for _, tt := range []struct {
		pattern, s string
		want       bool
	}{
		{"pci:v00008086d000010FBsv*sd*bc*sc*i*", "pci:v00008086d000010FBsv00008086sd0000000Cbc02sc00i00", true},
		{"pci:v00008086d000010FBsv*sd*bc*sc*i*", "pci:v00008086d000010FCsv00008086sd0000000Cbc02sc00i00", false},
		{"pci:v*d*sv*sd*bc01sc06i01*", "pci:v00008086d00002922sv00001AF4sd00001100bc01sc06i01", true},
		{"usb:v*p*d*dc*dsc*dp*ic03isc*ip*in*", "usb:v0627p0001d0000dc00dsc00dp00ic03isc01ip01in00", true},
		{"usb:v*p*d*dc*dsc*dp*ic03isc*ip*in*", "usb:v0627p0001d0000dc00dsc00dp00ic08isc06ip50in00", false},
		{"a?c", "abc", true}, {"a?c", "ac", false}, {"*", "", true}, {"", "x", false},
		{"d[0-9]x", "d7x", true}, {"d[!0-9]x", "d7x", false}, {"d[^a]x", "dbx", true},
		{"d[]]x", "d]x", true}, {"a[bc", "a[bc", true}, {`a\*b`, "a*b", true}, {`a\*b`, "axb", false},
		{"*a*a*a*a*a*b", strings.Repeat("a", 200), false},
	} {
		if got := Glob(tt.pattern, tt.s); got != tt.want {
			t.Errorf("Glob(%q, %q) = %v, want %v", tt.pattern, tt.s, got, tt.want)
		}
	}
}

// Server hardware QEMU cannot emulate, by the real PCI IDs (vendor,
// device, subsystem, class) of the cards, matched against the real
// modules.alias of the rescue's kernel: each needs its driver, which the
// rescue ships, and the load order has every dependency before its user.
func TestMatchRealServerHardware(t *testing.T) {
	al, mods := realIndex(t)
	for _, tt := range []struct {
		card, modalias, module string
	}{
		{"Intel 82599ES 10G SFP+", "pci:v00008086d000010FBsv00008086sd0000000Cbc02sc00i00", "ixgbe"},
		{"Intel X710 10G SFP+", "pci:v00008086d00001572sv00008086sd00000001bc02sc00i00", "i40e"},
		{"Intel E810-C 100G", "pci:v00008086d00001592sv00008086sd00000002bc02sc00i00", "ice"},
		{"Intel I350 1G", "pci:v00008086d00001521sv00008086sd00000001bc02sc00i00", "igb"},
		{"Mellanox ConnectX-5", "pci:v000015B3d00001017sv000015B3sd00000007bc02sc00i00", "mlx5_core"},
		{"Broadcom BCM57414 25G", "pci:v000014E4d000016D7sv000014E4sd00001402bc02sc00i00", "bnxt_en"},
		{"Broadcom BCM5720 1G", "pci:v000014E4d0000165Fsv00001028sd000004F7bc02sc00i00", "tg3"},
		{"QLogic FastLinQ QL41000", "pci:v00001077d00008070sv00001077sd00000001bc02sc00i00", "qede"},
		{"Realtek RTL8125 2.5G", "pci:v000010ECd00008125sv00001849sd00008125bc02sc00i00", "r8169"},
		{"Broadcom MegaRAID SAS-3 3108 (PERC H730P)", "pci:v00001000d0000005Dsv00001028sd00001F47bc01sc04i00", "megaraid_sas"},
		{"Broadcom MegaRAID 9460 (SAS3508)", "pci:v00001000d00000016sv00001000sd00009460bc01sc04i00", "megaraid_sas"},
		{"Broadcom SAS3008 HBA", "pci:v00001000d00000097sv00001000sd00003090bc01sc07i00", "mpt3sas"},
		{"Microchip SmartPQI (HPE P408i)", "pci:v00009005d0000028Fsv0000103Csd0000600Cbc01sc07i00", "smartpqi"},
		{"HPE Smart Array P420i", "pci:v0000103Cd0000323Bsv0000103Csd00003354bc01sc04i00", "hpsa"},
		{"Intel C620 AHCI", "pci:v00008086d0000A182sv000015D9sd00001B0Dbc01sc06i01", "ahci"},
		{"Samsung PM9A3 NVMe", "pci:v0000144Dd0000A80Asv0000144Dsd0000A812bc01sc08i02", "nvme"},
		{"Intel xHCI", "pci:v00008086d0000A1AFsv000015D9sd00001B0Dbc0Csc03i30", "xhci_pci"},
	} {
		got := al.Match(tt.modalias)
		if !slices.Contains(got, tt.module) {
			t.Errorf("%s (%s): modules %v, want %s", tt.card, tt.modalias, got, tt.module)
			continue
		}
		order, err := mods.Order(tt.module, nil)
		if err != nil {
			t.Errorf("%s: %v", tt.card, err)
			continue
		}
		if order[len(order)-1] != tt.module {
			t.Errorf("%s: load order %v does not end with %s", tt.card, order, tt.module)
		}
		pos := map[string]int{}
		for i, m := range order {
			pos[m] = i
		}
		for _, m := range order {
			for _, d := range mods.Deps[m] {
				if mods.Builtin[d] {
					continue
				}
				if p, ok := pos[d]; !ok || p > pos[m] {
					t.Errorf("%s: %s needs %s, which is not loaded before it: %v", tt.card, m, d, order)
				}
			}
		}
	}
	// A card whose driver is left out of the rescue matches nothing.
	if got := al.Match("pci:v00001022d00002020sv00001022sd00002020bc01sc00i00"); len(got) != 0 {
		t.Errorf("AMD Am53c974 (driver am53c974, not shipped) matches %v", got)
	}
}

func TestParseErrors(t *testing.T) {
	for _, in := range []string{"alias onlytwo\n", "notalias a b\n", "alias a b c\n"} {
		if _, err := ParseAliases(strings.NewReader(in)); err == nil {
			t.Errorf("ParseAliases(%q) accepted", in)
		}
	}
	if _, err := ParseDeps(strings.NewReader("no colon here\n")); err == nil {
		t.Error("ParseDeps accepted a line without a colon")
	}
	m, _ := ParseDeps(strings.NewReader("kernel/a.ko: kernel/b.ko\nkernel/b.ko: kernel/a.ko\n"))
	if _, err := m.Order("a", nil); err != nil {
		t.Errorf("a dependency cycle is not an error of Order (each visited once): %v", err)
	}
	if _, err := m.Order("c", nil); err == nil {
		t.Error("Order of an unknown module succeeded")
	}
}

// fakeSys is a sysfs tree with devices; bind makes a loaded module "probe":
// it binds its devices and may add new ones (an HBA's disks, a USB
// controller's keyboard).
type fakeSys struct {
	t    *testing.T
	root string
	mu   sync.Mutex
}

func (f *fakeSys) add(path, subsystem, modalias string) {
	dir := filepath.Join(f.root, "devices", path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		f.t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "modalias"), []byte(modalias+"\n"), 0o644)
	os.Symlink("../../../bus/"+subsystem, filepath.Join(dir, "subsystem"))
}

func (f *fakeSys) bind(path, driver string) {
	os.Symlink("../../../bus/x/drivers/"+driver, filepath.Join(f.root, "devices", path, "driver"))
}

func (f *fakeSys) pci(slot string, vendor, device uint16, class uint32, driver string) {
	path := "pci0000:00/" + slot
	f.add(path, "pci", fmt.Sprintf("pci:v%08Xd%08Xsv00001AF4sd00001100bc%02Xsc%02Xi%02X", vendor, device, class>>16, class>>8&0xff, class&0xff))
	dir := filepath.Join(f.root, "devices", path)
	os.WriteFile(filepath.Join(dir, "vendor"), []byte(fmt.Sprintf("0x%04x\n", vendor)), 0o644)
	os.WriteFile(filepath.Join(dir, "device"), []byte(fmt.Sprintf("0x%04x\n", device)), 0o644)
	os.WriteFile(filepath.Join(dir, "class"), []byte(fmt.Sprintf("0x%06x\n", class)), 0o644)
	os.MkdirAll(filepath.Join(f.root, "bus", "pci", "devices"), 0o755)
	os.Symlink("../../../devices/"+path, filepath.Join(f.root, "bus", "pci", "devices", slot))
	if driver != "" {
		f.bind(path, driver)
	}
}

// A machine like the QEMU matrix's: a MegaRAID HBA whose RAID volume shows
// as a SCSI disk only once megaraid_sas probed, an xHCI controller whose
// keyboard shows once xhci_pci and usbcore are there, and whose HID device
// shows once usbhid bound, an e1000e NIC, and a SCSI controller whose
// driver the rescue does not ship. Load rounds go on until nothing new
// appears, each module after its dependencies.
func TestLoaderRoundsUntilNothingNew(t *testing.T) {
	f := &fakeSys{t: t, root: t.TempDir()}
	f.pci("0000:00:02.0", 0x8086, 0x10d3, 0x020000, "") // e1000e
	f.pci("0000:00:04.0", 0x1000, 0x0079, 0x010400, "") // MegaRAID SAS 2108 (QEMU's megasas-gen2)
	f.pci("0000:00:05.0", 0x1b36, 0x000d, 0x0c0330, "") // qemu-xhci
	f.pci("0000:00:06.0", 0x1022, 0x2020, 0x010000, "") // Am53c974: no driver shipped
	f.pci("0000:00:07.0", 0x8086, 0x2922, 0x010601, "") // ICH9 AHCI
	f.pci("0000:00:08.0", 0x1af4, 0x1000, 0x020000, "") // virtio NIC (transitional)
	var loaded []string
	probe := map[string]func(){
		"megaraid_sas": func() {
			f.bind("pci0000:00/0000:00:04.0", "megaraid_sas")
			f.add("pci0000:00/0000:00:04.0/host0/target0:2:0/0:2:0:0", "scsi", "scsi:t-0x00")
		},
		"xhci_pci": func() {
			f.bind("pci0000:00/0000:00:05.0", "xhci_hcd")
			f.add("pci0000:00/0000:00:05.0/usb1", "usb", "usb:v1D6Bp0003d0601dc09dsc00dp03ic09isc00ip00in00")
		},
		"usbcore": func() {}, // its hub driver is built into the module
		"usbhid": func() {
			f.add("pci0000:00/0000:00:05.0/usb1/1-1/1-1:1.0/0003:0627:0001.0001", "hid", "hid:b0003g0001v00000627p00000001")
		},
		"virtio_pci": func() {
			f.bind("pci0000:00/0000:00:08.0", "virtio-pci")
			f.add("pci0000:00/0000:00:08.0/virtio0", "virtio", "virtio:d00000001v00001AF4")
		},
	}
	var usbKeyboard sync.Once
	l := &Loader{ModDir: "testdata", SysRoot: f.root, Settle: 20 * time.Millisecond,
		Loaded: func() map[string]bool { return map[string]bool{} },
		Always: []string{"efivarfs"},
		Load: func(path string) error {
			n := ModuleName(path)
			loaded = append(loaded, n)
			if p := probe[n]; p != nil {
				p()
			}
			// The root hub's driver (usbcore's "hub") finds the keyboard.
			if n == "usbcore" || n == "xhci_pci" {
				if _, err := os.Stat(filepath.Join(f.root, "devices/pci0000:00/0000:00:05.0/usb1")); err == nil {
					usbKeyboard.Do(func() {
						f.add("pci0000:00/0000:00:05.0/usb1/1-1/1-1:1.0", "usb", "usb:v0627p0001d0000dc00dsc00dp00ic03isc01ip01in00")
					})
				}
			}
			return nil
		}}
	res, err := l.Run(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	pos := map[string]int{}
	for i, m := range loaded {
		if _, dup := pos[m]; dup {
			t.Errorf("%s loaded twice: %v", m, loaded)
		}
		pos[m] = i
	}
	for _, w := range []struct{ before, after string }{
		{"efivarfs", "e1000e"}, {"scsi_mod", "megaraid_sas"}, {"megaraid_sas", "sd_mod"}, {"usbcore", "xhci_hcd"},
		{"xhci_hcd", "xhci_pci"}, {"xhci_pci", "usbhid"}, {"hid", "usbhid"}, {"usbhid", "hid_generic"},
		{"libahci", "ahci"}, {"virtio_pci", "virtio_net"}, {"net_failover", "virtio_net"},
	} {
		b, ok1 := pos[w.before]
		a, ok2 := pos[w.after]
		if !ok1 || !ok2 || b > a {
			t.Errorf("want %s loaded before %s: %v", w.before, w.after, loaded)
		}
	}
	for _, m := range []string{"am53c974", "esp_scsi", "nvme", "ixgbe"} {
		if _, ok := pos[m]; ok {
			t.Errorf("%s loaded for hardware that is not there (or not shipped): %v", m, loaded)
		}
	}
	if res.Rounds < 3 || len(res.Loaded) != len(loaded) {
		t.Errorf("result %s, loaded %v", res, loaded)
	}

	// What is left: the Am53c974 has no driver, in the rescue or bound.
	al, _ := realIndex(t)
	un, err := FindUnclaimed(f.root, al)
	if err != nil {
		t.Fatal(err)
	}
	var msgs []string
	for _, u := range un {
		msgs = append(msgs, u.Slot+" "+u.Message())
	}
	want := []string{
		"0000:00:02.0 PCI 8086:10d3 Ethernet controller: no driver bound (e1000e matches it)",
		"0000:00:06.0 PCI 1022:2020 SCSI storage controller: no driver in the rescue",
		"0000:00:07.0 PCI 8086:2922 SATA controller: no driver bound (ahci matches it)",
	}
	if !slices.Equal(msgs, want) {
		t.Errorf("unclaimed (the fake binds only what its probes bind):\n got %q\nwant %q", msgs, want)
	}
}

func TestLoaderFailureStopsDependants(t *testing.T) {
	f := &fakeSys{t: t, root: t.TempDir()}
	f.pci("0000:00:04.0", 0x1000, 0x0079, 0x010400, "")
	var loaded []string
	l := &Loader{ModDir: "testdata", SysRoot: f.root, Settle: 10 * time.Millisecond,
		Loaded: func() map[string]bool { return map[string]bool{"scsi_common": true} },
		Load: func(path string) error {
			n := ModuleName(path)
			if n == "scsi_mod" {
				return fmt.Errorf("finit_module: no such device")
			}
			loaded = append(loaded, n)
			return nil
		}}
	res, err := l.Run(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if slices.Contains(loaded, "megaraid_sas") || slices.Contains(loaded, "scsi_common") || res.Failed["scsi_mod"] == "" {
		t.Errorf("after scsi_mod failed: loaded %v, failed %v", loaded, res.Failed)
	}
}

func TestNICs(t *testing.T) {
	f := &fakeSys{t: t, root: t.TempDir()}
	f.pci("0000:00:08.0", 0x1af4, 0x1000, 0x020000, "virtio-pci")
	f.add("pci0000:00/0000:00:08.0/virtio0", "virtio", "virtio:d00000001v00001AF4")
	f.bind("pci0000:00/0000:00:08.0/virtio0", "virtio_net")
	f.pci("0000:00:02.0", 0x8086, 0x10d3, 0x020000, "e1000e")
	net := filepath.Join(f.root, "class", "net")
	for name, dev := range map[string]string{"eth0": "pci0000:00/0000:00:08.0/virtio0", "eth1": "pci0000:00/0000:00:02.0", "lo": ""} {
		d := filepath.Join(net, name)
		os.MkdirAll(d, 0o755)
		os.WriteFile(filepath.Join(d, "address"), []byte("52:54:00:00:00:0"+name[len(name)-1:]+"\n"), 0o644)
		if dev != "" {
			os.Symlink(filepath.Join(f.root, "devices", dev), filepath.Join(d, "device"))
		}
	}
	nics, err := NICs(f.root)
	if err != nil {
		t.Fatal(err)
	}
	got := fmt.Sprint(nics)
	if want := "[{eth0 52:54:00:00:00:00 virtio_net 1af4:1000} {eth1 52:54:00:00:00:01 e1000e 8086:10d3}]"; got != want {
		t.Errorf("NICs = %s, want %s", got, want)
	}
}
