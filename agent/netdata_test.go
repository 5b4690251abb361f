package agent

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/byoi/byoi/agentapi"
	"github.com/byoi/byoi/configdrive"
	"github.com/byoi/byoi/job"
)

// TestBootMAC: BOOTIF= names the boot NIC when the server has it
// (pxelinux's and the plain form, any case); else the only NIC that is up;
// else none.
func TestBootMAC(t *testing.T) {
	sys := t.TempDir()
	nics := []agentapi.InventoryNIC{{Name: "ens3", MAC: "52:54:00:12:34:56"}, {Name: "ens4", MAC: "52:54:00:ab:cd:ef"}}
	state := func(name, s string) {
		d := filepath.Join(sys, "class", "net", name)
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(d, "operstate"), []byte(s+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	state("ens3", "down")
	state("ens4", "down")
	for _, tc := range []struct{ cmdline, want string }{
		{"quiet BOOTIF=01-52-54-00-AB-CD-EF byoi.url=x", "52:54:00:ab:cd:ef"},
		{"BOOTIF=52:54:00:12:34:56", "52:54:00:12:34:56"},
		{"BOOTIF=01-02-00-00-00-00-99", ""}, // not a NIC of this server
		{"BOOTIF=garbage", ""},
		{"", ""},
	} {
		if got := bootMAC(sys, tc.cmdline, nics); got != tc.want {
			t.Errorf("%q: %q, want %q", tc.cmdline, got, tc.want)
		}
	}
	state("ens4", "up")
	if got := bootMAC(sys, "BOOTIF=01-02-00-00-00-00-99", nics); got != "52:54:00:ab:cd:ef" {
		t.Errorf("the only NIC up: %q", got)
	}
	state("ens3", "up")
	if got := bootMAC(sys, "", nics); got != "" {
		t.Errorf("two NICs up: %q, want none", got)
	}
	if got := bootMAC(sys, "BOOTIF=01-52-54-00-12-34-56", nics); got != "52:54:00:12:34:56" {
		t.Errorf("BOOTIF with two NICs up: %q", got)
	}
}

// TestDeployNetworkData: a deployment with a ConfigDrive on a server whose
// inventory names its boot NIC writes network_data.json with DHCP on that
// MAC (the bytes configdrive.NetworkData makes, found in the config-2
// partition on the disk); networkData "off" leaves no network_data.json;
// an unknown boot NIC leaves none with WarnNoBootNIC.
func TestDeployNetworkData(t *testing.T) {
	const boot = "52:54:00:ab:cd:ef"
	want, err := configdrive.NetworkData([]string{boot})
	if err != nil {
		t.Fatal(err)
	}
	img := testImage(t, 16*mib, 512)
	nics := []agentapi.InventoryNIC{{Name: "ens3", MAC: "52:54:00:12:34:56"}, {Name: "ens4", MAC: boot}}
	for _, tc := range []struct {
		name    string
		option  string
		bootMAC string
		written bool
		warned  bool
	}{
		{"on", "", boot, true, false},
		{"off", job.NetworkDataOff, boot, false, false},
		{"boot NIC unknown", "", "", false, true},
		{"boot MAC not a NIC", "", "02:00:00:00:00:99", false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := oldSystemDisk(t, 32*mib)
			j := &job.Job{ImageURL: serve(t, img, ""), ImageType: "raw", DiskGroupID: 1, NetworkData: tc.option,
				ConfigDrive: &job.ConfigDrive{Hostname: "web1"}}
			rec := &recorder{}
			d := rec.deployer()
			d.Inventory = &agentapi.Inventory{NICs: nics, BootMAC: tc.bootMAC}
			res, err := d.Deploy(context.Background(), j, openFile(t, path))
			if err != nil {
				t.Fatal(err)
			}
			if res.ConfigDrive == nil {
				t.Fatal("no ConfigDrive partition")
			}
			disk, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			p := res.ConfigDrive
			start, end := p.Start, p.Start+p.Size
			if p.Size == 0 {
				t.Fatalf("partition %+v", p)
			}
			cd := disk[start:end]
			if !bytes.Contains(cd, []byte("meta_data.json")) {
				t.Fatal("the config-2 partition holds no meta_data.json: wrong range read")
			}
			hasName := bytes.Contains(cd, []byte("network_data.json"))
			hasData := bytes.Contains(cd, want)
			if hasName != tc.written || hasData != tc.written || (!tc.written && bytes.Contains(cd, []byte("ethernet_mac_address"))) {
				t.Errorf("network_data.json name %v, content %v; want %v", hasName, hasData, tc.written)
			}
			if got := slices.Contains(rec.warningCodes(), job.WarnNoBootNIC); got != tc.warned {
				t.Errorf("WarnNoBootNIC %v, want %v (warnings %v)", got, tc.warned, rec.warningCodes())
			}
		})
	}
}
