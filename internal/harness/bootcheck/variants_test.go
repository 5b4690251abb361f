package main

import (
	"regexp"
	"testing"
)

func TestExactly(t *testing.T) {
	fstab := []want{{"CheckFstabNoFail", "warn", "/etc/fstab"}, {"CheckFstabDevName", "warn", "/etc/fstab"}}
	initrd := []want{{"CheckDiskDriverAbsent", "refuse", "/boot/initrd.img-*"}}
	for _, c := range []struct {
		name string
		got  []finding
		ws   []want
		ok   bool
	}{
		{"both", []finding{{Code: "CheckFstabDevName", Severity: "warn", File: "/etc/fstab", Line: 4}, {Code: "CheckFstabNoFail", Severity: "warn", File: "/etc/fstab", Line: 4}}, fstab, true},
		{"one missing", []finding{{Code: "CheckFstabNoFail", Severity: "warn", File: "/etc/fstab"}}, fstab, false},
		{"one more", []finding{{Code: "CheckFstabDevName", Severity: "warn", File: "/etc/fstab"}, {Code: "CheckFstabNoFail", Severity: "warn", File: "/etc/fstab"}, {Code: "CheckNoKernel", Severity: "warn", File: "/boot"}}, fstab, false},
		{"other severity", []finding{{Code: "CheckDiskDriverAbsent", Severity: "warn", File: "/boot/initrd.img-6.1.0-57-amd64"}}, initrd, false},
		{"prefix", []finding{{Code: "CheckDiskDriverAbsent", Severity: "refuse", File: "/boot/initrd.img-6.1.0-57-amd64"}}, initrd, true},
		{"other file", []finding{{Code: "CheckDiskDriverAbsent", Severity: "refuse", File: "/boot/initramfs-6.1.img"}}, initrd, false},
		{"none wanted, none got", nil, nil, true},
	} {
		if got := exactly(c.got, c.ws); got != c.ok {
			t.Errorf("%s: exactly = %v, want %v", c.name, got, c.ok)
		}
	}
}

// The rows of cloud-init 22.4's "Net device info" table, as the two-NIC
// boots printed them.
func TestCloudInitNICRows(t *testing.T) {
	up := `[   53.837992] cloud-init[265]: ci-info: |  ens5  |  True |        10.0.2.15        | 255.255.255.0 | global | 52:54:00:b1:00:02 |`
	down := `[  108.659327] cloud-init[266]: ci-info: |  ens5  | False |            .            |     .     |   .   | 52:54:00:b1:00:02 |`
	other := `[   53.768372] cloud-init[265]: ci-info: |  ens2  | False |            .            |       .       |   .    | 52:54:00:b1:00:01 |`
	re := ciNICRE(macDHCP)
	if !re.MatchString(up) || !re.MatchString(down) {
		t.Errorf("%s does not match the rows of %s", re, macDHCP)
	}
	if re.MatchString(other) {
		t.Errorf("%s matches the row of another MAC", re)
	}
	// The route tables and the authorized keys table are not NIC rows.
	if re.MatchString(`ci-info: |   0   |   10.0.2.0  | 0.0.0.0 | 255.255.255.0 |    ens5   |   U   |`) {
		t.Errorf("%s matches a route row", re)
	}
}

func TestSigns(t *testing.T) {
	for _, c := range []struct {
		re   *regexp.Regexp
		line string
	}{
		{noBootRE, `BdsDxe: failed to load Boot0001 "UEFI QEMU NVMe Ctrl byoi-biosonly 1" from PciRoot(0x0)/Pci(0x3,0x0)/NVMe(0x1,00-00-00-00-00-00-00-00): Not Found`},
		{noRootRE, `Gave up waiting for root file system device.  Common problems:`},
		{noRootRE, `ALERT!  UUID=12a389a1-c212-4b75-a056-ee53bada32d6 does not exist.  Dropping to a shell!`},
		{emergencyRE, `You are in emergency mode. After logging in, type "journalctl -xb" to view`},
		{ciFinalRE, `[  265.163651] cloud-init[393]: Cloud-init v. 22.4.2 finished at Mon, 07 Dec 2026 16:16:47 +0000. Datasource DataSourceNone.  Up 265.00 seconds`},
	} {
		if !c.re.MatchString(c.line) {
			t.Errorf("/%s/ does not match %q", c.re, c.line)
		}
	}
	// A good boot's lines are no defect's sign.
	for _, l := range []string{`BdsDxe: starting Boot0001 "UEFI QEMU NVMe Ctrl x 1" from PciRoot(0x0)/Pci(0x4,0x0)/NVMe(0x1,00-00-00-00-00-00-00-00)`,
		`root: clean, 13979/122880 files, 131905/491515 blocks`, `Debian GNU/Linux 12 twonic-x ttyS0`} {
		for _, re := range []*regexp.Regexp{noBootRE, noRootRE, emergencyRE} {
			if re.MatchString(l) {
				t.Errorf("/%s/ matches a good boot's line %q", re, l)
			}
		}
	}
	if m := ciFinalRE.FindStringSubmatch(`Cloud-init v. 22.4.2 finished at Mon, 07 Dec 2026 16:16:47 +0000. Datasource DataSourceNone.  Up 265.00 seconds`); m == nil || m[1] != "DataSourceNone." {
		t.Errorf("ciFinalRE's datasource: %q", m)
	}
	if !ciFinalStageRE.MatchString(`cloud-init[400]: Can not apply stage final, no datasource found! Likely bad things to come!`) {
		t.Errorf("ciFinalStageRE misses cloud-init's refusal to run without a datasource")
	}
}
