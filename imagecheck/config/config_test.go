package config

import (
	"reflect"
	"testing"
)

func TestFstab(t *testing.T) {
	es := ParseFstab([]byte("# c\nUUID=ab / ext4 errors=remount-ro 0 1\n\n/dev/vdb1\t/srv/My\\040Data xfs defaults,nofail 0 2\nproc /proc\n"))
	if len(es) != 3 || es[0].Spec != "UUID=ab" || es[0].Line != 2 || es[1].File != "/srv/My Data" || !es[1].HasOption("nofail") || es[0].HasOption("nofail") || es[2].Type != "auto" {
		t.Fatalf("%+v", es)
	}
}

func TestCmdline(t *testing.T) {
	ps := ParseCmdline(`BOOT_IMAGE=/vmlinuz root=UUID=1 ro quiet root=LABEL="my root" net.ifnames=0`)
	if v, _ := Get(ps, "root"); v != "LABEL=my root" {
		t.Errorf("root = %q", v)
	}
	if _, ok := Get(ps, "quiet"); !ok {
		t.Error("flag")
	}
}

const grubCfg = `
set default="1>0"
if [ x"${feature_menuentry_id}" = xy ]; then
  menuentry_id_option="--id"
fi
menuentry 'Debian GNU/Linux' --class debian $menuentry_id_option 'gnulinux-simple-abc' {
	linux	/boot/vmlinuz-6.1.0-18-amd64 root=UUID=abc ro  quiet
	initrd	/boot/intel-ucode.img /boot/initrd.img-6.1.0-18-amd64
}
submenu 'Advanced options' {
	menuentry 'Debian, with Linux 6.1.0-17-amd64' {
		linux	/boot/vmlinuz-6.1.0-17-amd64 root=/dev/sda1 ro
		initrd	/boot/initrd.img-6.1.0-17-amd64
	}
}
`

func TestGrub(t *testing.T) {
	c := ParseGrub([]byte(grubCfg))
	if len(c.Entries) != 2 {
		t.Fatalf("%+v", c)
	}
	e := c.DefaultEntry(nil)
	if e.Title != "Debian, with Linux 6.1.0-17-amd64" || e.Index != "1>0" || e.Linux != "/boot/vmlinuz-6.1.0-17-amd64" || e.Args != "root=/dev/sda1 ro" {
		t.Errorf("default %+v", e)
	}
	if f := c.Entries[0]; f.ID != "gnulinux-simple-abc" || !reflect.DeepEqual(f.Initrds, []string{"/boot/intel-ucode.img", "/boot/initrd.img-6.1.0-18-amd64"}) {
		t.Errorf("first %+v", f)
	}
	c.Default = "${saved_entry}"
	if e := c.DefaultEntry(map[string]string{"saved_entry": "gnulinux-simple-abc"}); e != &c.Entries[0] {
		t.Errorf("saved_entry: %+v", e)
	}
	c.Default = "nothing"
	if e := c.DefaultEntry(nil); e != &c.Entries[0] {
		t.Error("fallback")
	}
	if !ParseGrub([]byte("insmod blscfg\nblscfg\n")).BLS {
		t.Error("blscfg")
	}
}

func TestBLS(t *testing.T) {
	es := []BLSEntry{
		ParseBLS("a-5.14.0-70", []byte("title A\nversion 5.14.0-70.el9\nlinux /vmlinuz-5.14.0-70\ninitrd /initramfs-5.14.0-70.img\noptions root=UUID=x $kernelopts\n")),
		ParseBLS("a-5.14.0-362", []byte("version 5.14.0-362.el9\nlinux /vmlinuz-5.14.0-362\n")),
	}
	SortBLS(es)
	if es[0].ID != "a-5.14.0-362" || es[1].Options != "root=UUID=x $kernelopts" || es[1].Initrds[0] != "/initramfs-5.14.0-70.img" || es[1].LinuxLine != 3 {
		t.Errorf("%+v", es)
	}
	if VersionCompare("6.1.0-10", "6.1.0-9") <= 0 || VersionCompare("1.0", "1.0") != 0 {
		t.Error("version compare")
	}
	if ParseEnv([]byte("# GRUB\nsaved_entry=x\nkernelopts=root=UUID=y ro\n"))["kernelopts"] != "root=UUID=y ro" {
		t.Error("env")
	}
}

func TestYAML(t *testing.T) {
	doc := ParseYAML([]byte(`
# cloud.cfg
datasource_list: [ NoCloud,
   ConfigDrive ]  # two
users:
   - default
   - name: bob
     groups: [a, b]
network:
  version: 2
  ethernets:
    eth0:
      dhcp4: true
    lan:
      match: {macaddress: "52:54:00:AA:BB:CC"}
      set-name: lan0
    "en*":
      match:
        name: en*
key: |
  text
  more
`))
	if ds, ok := DatasourceList(doc); !ok || !reflect.DeepEqual(ds, []string{"NoCloud", "ConfigDrive"}) {
		t.Errorf("datasource_list %v %v (%#v)", ds, ok, doc)
	}
	if u := Path(doc, "users").([]any); len(u) != 2 || Path(u[1], "name") != "bob" || len(Strings(Path(u[1], "groups"))) != 2 {
		t.Errorf("users %#v", u)
	}
	b := Netplan(doc)
	want := []Binding{{Name: "en*"}, {Name: "eth0"}, {MAC: "52:54:00:aa:bb:cc", Rename: "lan0"}}
	if !reflect.DeepEqual(b, want) {
		t.Errorf("netplan %+v", b)
	}
	if ds, _ := DatasourceList(ParseYAML([]byte("datasource_list:\n- NoCloud\n- None\n"))); !reflect.DeepEqual(ds, []string{"NoCloud", "None"}) {
		t.Errorf("block list %v", ds)
	}
	if ds, _ := DatasourceList(ParseYAML([]byte("datasource_list: NoCloud, None\n"))); !reflect.DeepEqual(ds, []string{"NoCloud", "None"}) {
		t.Errorf("plain %v", ds)
	}
}

func TestNet(t *testing.T) {
	b, src := Interfaces([]byte("source /etc/network/interfaces.d/*\nauto lo\niface lo inet loopback\nallow-hotplug eth0\niface eth0 inet dhcp\n  hwaddress ether 52:54:00:12:34:56\nsource-directory /etc/net.d\n"))
	if len(b) != 1 || b[0].Name != "eth0" || b[0].MAC != "52:54:00:12:34:56" || b[0].Line != 4 || len(src) != 2 || src[1] != "/etc/net.d/*" {
		t.Errorf("%+v %v", b, src)
	}
	if nd := Networkd([]byte("[Match]\nName=eth0 en*\n[Network]\nDHCP=yes\n")); len(nd) != 2 || nd[0].Name != "eth0" || nd[0].Line != 2 {
		t.Errorf("networkd %+v", nd)
	}
	if nd := Networkd([]byte("[Match]\nMACAddress=52:54:00:12:34:57\n[Link]\nName=wan\n")); len(nd) != 1 || nd[0].MAC != "52:54:00:12:34:57" || nd[0].Rename != "wan" {
		t.Errorf("link %+v", nd)
	}
	if nm := NetworkManager([]byte("[connection]\nid=x\ntype=ethernet\ninterface-name=eth1\n[ethernet]\nmac-address=52:54:00:12:34:58\n")); len(nm) != 1 || nm[0].Name != "eth1" || nm[0].MAC != "52:54:00:12:34:58" {
		t.Errorf("nm %+v", nm)
	}
	if u := UdevNetRules([]byte(`SUBSYSTEM=="net", ACTION=="add", DRIVERS=="?*", ATTR{address}=="52:54:00:12:34:59", NAME="eth0"` + "\n")); len(u) != 1 || u[0].Rename != "eth0" {
		t.Errorf("udev %+v", u)
	}
}

// FuzzParsers feeds arbitrary bytes to every parser of the package.
func FuzzParsers(f *testing.F) {
	for _, s := range []string{grubCfg, "UUID=a / ext4 defaults 0 1\n", "datasource_list: [ a, {b: [c, d]} ]\nx:\n  - y: 1\n    z: [\n", "[Match]\nName=eth0\n", "auto eth0\niface eth0 inet dhcp\n hwaddress 1:2\n", "title x\noptions a\nlinux /v\n", "root=\"a b\" x",
		"# GRUB Environment Block\nsaved_entry=abc\nkernelopts=root=UUID=x ro\n#####",
		"[connection]\nid=x\ninterface-name=eth1\n[ethernet]\nmac-address=52:54:00:12:34:58\n",
		`SUBSYSTEM=="net", ATTR{address}=="52:54:00:12:34:59", NAME="eth0"` + "\n",
		"network:\n  version: 2\n  ethernets:\n    id0:\n      match: {macaddress: \"52:54:00:12:34:56\"}\n      set-name: lan\n  bonds:\n    bond0:\n      interfaces: [eth0, eth1]\n",
		"#cloud-config\ndatasource_list: ['NoCloud', \"ConfigDrive\"]\ndatasource:\n  ConfigDrive:\n    dsmode: local\n",
		"DEVICE=eth0\nHWADDR=52:54:00:12:34:56\n"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		ParseFstab(b)
		ParseCmdline(string(b))
		c := ParseGrub(b)
		c.DefaultEntry(ParseEnv(b))
		es := []BLSEntry{ParseBLS("a", b), ParseBLS("b", b)}
		SortBLS(es)
		doc := ParseYAML(b)
		DatasourceList(doc)
		Netplan(doc)
		Interfaces(b)
		Networkd(b)
		NetworkManager(b)
		UdevNetRules(b)
		NormalizeMAC(string(b))
		VersionCompare(string(b), "6.1.0-18-amd64")
	})
}
