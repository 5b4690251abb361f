package controlplane

import (
	"encoding/json"
	"net/http"

	"github.com/byoi/byoi/agentapi"
)

// hardwareDetail is GET .../bringYourOwnImage/hardware, an addition beside
// OVH's specifications/hardware (which keeps OVH's shape): what the agent's
// inventory says beyond it, each disk with its controller's driver, each
// NIC with its driver, and the network and storage controllers no driver
// in the rescue claimed (issue 23). Empty lists until the agent reported.
type hardwareDetail struct {
	Disks     []agentapi.InventoryDisk   `json:"disks"`
	NICs      []agentapi.InventoryNIC    `json:"nics"`
	Unclaimed []agentapi.UnclaimedDevice `json:"unclaimedDevices"`
}

func (s *Server) hardwareDetail(c *call) (int, any, error) {
	v := hardwareDetail{Disks: []agentapi.InventoryDisk{}, NICs: []agentapi.InventoryNIC{}, Unclaimed: []agentapi.UnclaimedDevice{}}
	if c.server.Inventory != nil {
		var inv agentapi.Inventory
		if err := json.Unmarshal(c.server.Inventory, &inv); err != nil {
			return 0, nil, err
		}
		if inv.Disks != nil {
			v.Disks = inv.Disks
		}
		if inv.NICs != nil {
			v.NICs = inv.NICs
		}
		if inv.Unclaimed != nil {
			v.Unclaimed = inv.Unclaimed
		}
	}
	return http.StatusOK, v, nil
}
