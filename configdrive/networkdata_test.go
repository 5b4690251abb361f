package configdrive

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/byoi/byoi/internal/testutil"
)

// cloudInitNetworkScript reads an extracted drive with cloud-init's
// ConfigDrive datasource (sandboxed: its paths in a temporary directory)
// and prints the network configuration it derives, with the server's NICs
// given as known_macs (MAC -> name, argv[3] as JSON), and what
// convert_net_json says of a server that lacks the drive's MACs.
const cloudInitNetworkScript = `
import json, os, sys, logging
logging.basicConfig(level=logging.ERROR)
from cloudinit import helpers
from cloudinit.sources import DataSourceConfigDrive as dscd
from cloudinit.sources.helpers import openstack
drive, work, known = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
paths = helpers.Paths({"cloud_dir": os.path.join(work, "cloud"), "run_dir": os.path.join(work, "run")})
ds = dscd.DataSourceConfigDrive({"datasource_list": ["ConfigDrive"]}, None, paths)
ds.seed_dir = drive
if not ds.get_data():
    raise SystemExit("the ConfigDrive datasource found nothing")
out = {"network_json": ds.network_json if ds.network_json not in (None, dscd.sources.UNSET) else None}
if out["network_json"] is not None:
    out["config"] = openstack.convert_net_json(ds.network_json, known_macs=known)
    try:
        openstack.convert_net_json(ds.network_json, known_macs={"02:00:00:00:00:99": "other0"})
        out["unknown_mac_error"] = ""
    except ValueError as e:
        out["unknown_mac_error"] = str(e)
print(json.dumps(out))
`

type netView struct {
	NetworkJSON map[string]any `json:"network_json"`
	Config      struct {
		Version int `json:"version"`
		Config  []struct {
			Type       string `json:"type"`
			Name       string `json:"name"`
			MACAddress string `json:"mac_address"`
			Subnets    []struct {
				Type string `json:"type"`
			} `json:"subnets"`
		} `json:"config"`
	} `json:"config"`
	UnknownMACError string `json:"unknown_mac_error"`
}

// TestNetworkDataCloudInit: cloud-init's ConfigDrive datasource reads
// byoi's network_data.json from the ISO 9660 and the VFAT drive and derives
// exactly the NICs given, by MAC (upper-case input written lower-case), each
// with DHCP (dhcp4) and named after the server's NIC with that MAC; a
// server without those MACs makes cloud-init raise (why only the server's
// own MACs are written); a drive without DHCPMACs has no network data.
func TestNetworkDataCloudInit(t *testing.T) {
	requireCloudInit(t)
	known := `{"52:54:00:12:34:56": "ens3", "52:54:00:ab:cd:ef": "ens4", "52:54:00:00:00:01": "ens5"}`
	cases := []struct {
		name  string
		macs  []string
		names []string // the interfaces cloud-init configures, in order
	}{
		{"boot NIC", []string{"52:54:00:AB:CD:EF"}, []string{"ens4"}},
		{"two NICs", []string{"52:54:00:12:34:56", "52:54:00:ab:cd:ef"}, []string{"ens3", "ens4"}},
		{"none", nil, nil},
	}
	for _, f := range []Format{ISO9660, VFAT} {
		for _, tc := range cases {
			t.Run(f.String()+"/"+tc.name, func(t *testing.T) {
				c := Content{UUID: DeriveUUID("net|" + tc.name), Hostname: "web1", DHCPMACs: tc.macs}
				img, err := Build(context.Background(), c, f)
				if err != nil {
					t.Fatal(err)
				}
				p := writeImage(t, img)
				want := []string{"/openstack", "/openstack/latest", "/openstack/latest/meta_data.json"}
				if len(tc.macs) > 0 {
					want = append(want, "/openstack/latest/network_data.json")
				}
				if got := checkJudges(t, p, f); strings.Join(got, "\n") != strings.Join(want, "\n") {
					t.Errorf("image lists\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
				}
				dir := extract(t, p, f)
				out, errOut, err := testutil.RunErr(testutil.CloudInitPython, "-c", cloudInitNetworkScript, dir, t.TempDir(), known)
				if err != nil {
					t.Fatalf("cloud-init: %v\n%s", err, lastLine(errOut))
				}
				var v netView
				if err := json.Unmarshal([]byte(out), &v); err != nil {
					t.Fatalf("%q: %v", out, err)
				}
				if len(tc.macs) == 0 {
					if v.NetworkJSON != nil {
						t.Errorf("network data without DHCPMACs: %v", v.NetworkJSON)
					}
					return
				}
				if v.Config.Version != 1 || len(v.Config.Config) != len(tc.macs) {
					t.Fatalf("cloud-init network config %+v, want version 1 with %d interfaces", v.Config, len(tc.macs))
				}
				for i, ifc := range v.Config.Config {
					if ifc.Type != "physical" || ifc.MACAddress != strings.ToLower(tc.macs[i]) || ifc.Name != tc.names[i] {
						t.Errorf("interface %d: %+v, want physical %s named %s", i, ifc, strings.ToLower(tc.macs[i]), tc.names[i])
					}
					if len(ifc.Subnets) != 1 || ifc.Subnets[0].Type != "dhcp4" {
						t.Errorf("interface %d subnets %+v, want one dhcp4", i, ifc.Subnets)
					}
				}
				if !strings.Contains(v.UnknownMACError, "Unable to find a system nic") {
					t.Errorf("cloud-init on a server without these MACs said %q, want it to raise", v.UnknownMACError)
				}
			})
		}
	}
}

func TestNetworkDataRejects(t *testing.T) {
	many := make([]string, MaxDHCPNICs+1)
	for i := range many {
		many[i] = "02:00:00:00:00:00"
	}
	for name, macs := range map[string][]string{
		"empty":       {""},
		"dashes":      {"52-54-00-12-34-56"},
		"short":       {"52:54:00:12:34"},
		"not hex":     {"52:54:00:12:34:zz"},
		"no colons":   {"5254:0012:3456:"},
		"duplicate":   {"52:54:00:12:34:56", "52:54:00:12:34:56"},
		"dup by case": {"52:54:00:ab:cd:ef", "52:54:00:AB:CD:EF"},
		"too many":    many,
	} {
		_, err := Build(context.Background(), Content{UUID: "u", DHCPMACs: macs}, ISO9660)
		if !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: %v, want ErrInvalid", name, err)
		}
	}
	b, err := NetworkData([]string{"52:54:00:AB:CD:EF"})
	if err != nil {
		t.Fatal(err)
	}
	const want = `{"links":[{"id":"nic0","type":"phy","ethernet_mac_address":"52:54:00:ab:cd:ef"}],"networks":[{"id":"network0","type":"ipv4_dhcp","link":"nic0","network_id":"byoi-dhcp-nic0"}],"services":[]}` + "\n"
	if string(b) != want {
		t.Errorf("network_data.json\n%s\nwant\n%s", b, want)
	}
}
