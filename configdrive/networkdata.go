package configdrive

import (
	"encoding/json"
	"fmt"
	"strings"
)

// NetworkDataPath is the OpenStack network data file (cloud-init
// sources/helpers/openstack.py read_v2: optional, JSON; the ConfigDrive
// datasource turns it into its network configuration with
// convert_net_json).
const NetworkDataPath = "openstack/latest/network_data.json"

// MaxDHCPNICs bounds Content.DHCPMACs.
const MaxDHCPNICs = 64

// How cloud-init (22.4) reads network_data.json (convert_net_json):
//
//   - each link becomes a "physical" interface matched by its
//     ethernet_mac_address (lower-cased); cloud-init names it after the
//     system NIC with that MAC and raises "Unable to find a system nic" when
//     the server has none, so only MACs the server has may be written;
//   - each network whose "link" is a link's id becomes a subnet of it; type
//     "ipv4_dhcp" is a dhcp4 subnet;
//   - the datasource's network configuration (version 1) replaces the
//     image's fallback (DHCP on the first NIC found), which is what makes
//     the NIC the server booted from come up on a server with several.

type networkData struct {
	Links    []networkLink `json:"links"`
	Networks []network     `json:"networks"`
	Services []struct{}    `json:"services"`
}

type networkLink struct {
	ID   string `json:"id"`
	Type string `json:"type"`
	MAC  string `json:"ethernet_mac_address"`
}

type network struct {
	ID        string `json:"id"`
	Type      string `json:"type"`
	Link      string `json:"link"`
	NetworkID string `json:"network_id"`
}

// NetworkData returns the network_data.json that has cloud-init configure
// each NIC of macs (in that order) with DHCP (IPv4). The MACs must be six
// hex pairs separated by colons, each once; they are written lower-case.
func NetworkData(macs []string) ([]byte, error) {
	if len(macs) == 0 {
		return nil, fmt.Errorf("%w: network data without a NIC", ErrInvalid)
	}
	if len(macs) > MaxDHCPNICs {
		return nil, fmt.Errorf("%w: network data for %d NICs, more than %d", ErrInvalid, len(macs), MaxDHCPNICs)
	}
	nd := networkData{Links: []networkLink{}, Networks: []network{}, Services: []struct{}{}}
	seen := map[string]bool{}
	for i, m := range macs {
		mac, ok := normalMAC(m)
		if !ok {
			return nil, fmt.Errorf("%w: network data: NIC %d has no valid MAC address (six hex pairs separated by colons)", ErrInvalid, i+1)
		}
		if seen[mac] {
			return nil, fmt.Errorf("%w: network data: MAC address %s is given twice", ErrInvalid, mac)
		}
		seen[mac] = true
		id := fmt.Sprintf("nic%d", i)
		nd.Links = append(nd.Links, networkLink{ID: id, Type: "phy", MAC: mac})
		nd.Networks = append(nd.Networks, network{ID: fmt.Sprintf("network%d", i), Type: "ipv4_dhcp", Link: id, NetworkID: "byoi-dhcp-" + id})
	}
	b, err := json.Marshal(nd)
	if err != nil {
		return nil, fmt.Errorf("configdrive: encode %s: %w", NetworkDataPath, err)
	}
	return append(b, '\n'), nil
}

// normalMAC returns s lower-cased when it is six hex pairs separated by
// colons.
func normalMAC(s string) (string, bool) {
	if len(s) != 17 {
		return "", false
	}
	s = strings.ToLower(s)
	for i := 0; i < len(s); i++ {
		c := s[i]
		if i%3 == 2 {
			if c != ':' {
				return "", false
			}
			continue
		}
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return "", false
		}
	}
	return s, true
}
