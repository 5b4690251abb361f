package agent

import (
	"os"
	"path/filepath"
	"strings"

	"github.com/byoi/byoi/agentapi"
	"github.com/byoi/byoi/job"
)

// bootMAC returns the MAC of the NIC the rescue booted from, one of nics:
// the one BOOTIF= on the kernel command line names (pxelinux's
// "01-aa-bb-cc-dd-ee-ff" or "aa:bb:cc:dd:ee:ff"; rescue/init brings up
// that NIC), else the only NIC whose operstate is "up" (rescue/init leaves
// the NICs without a lease down); "" when neither tells.
func bootMAC(sysRoot, cmdline string, nics []agentapi.InventoryNIC) string {
	has := func(mac string) bool {
		for _, n := range nics {
			if n.MAC == mac && mac != "" {
				return true
			}
		}
		return false
	}
	for _, w := range strings.Fields(cmdline) {
		v, ok := strings.CutPrefix(w, "BOOTIF=")
		if !ok {
			continue
		}
		if len(v) == 20 && strings.HasPrefix(v, "01-") {
			v = v[3:]
		}
		if mac, err := agentapi.NormalizeMAC(v); err == nil && has(mac) {
			return mac
		}
	}
	up := ""
	for _, n := range nics {
		b, err := os.ReadFile(filepath.Join(sysRoot, "class", "net", n.Name, "operstate"))
		if err != nil || strings.TrimSpace(string(b)) != "up" || n.MAC == "" {
			continue
		}
		if up != "" {
			return ""
		}
		up = n.MAC
	}
	return up
}

// kernelCmdline is the running kernel's command line when sysRoot is the
// real /sys ("" for a fake tree).
func kernelCmdline(sysRoot string) string {
	if sysRoot != "/sys" {
		return ""
	}
	b, err := os.ReadFile("/proc/cmdline")
	if err != nil || len(b) > 64<<10 {
		return ""
	}
	return string(b)
}

// dhcpMACs is what the ConfigDrive's network_data.json configures with
// DHCP: the NIC the server booted from, when the inventory names it and
// it is one of the server's NICs (cloud-init raises on a MAC the server
// lacks); none when the job turns network data off or the boot NIC is
// unknown (a warning when there is an inventory to tell it).
func (dp *deployment) dhcpMACs() []string {
	if dp.job.NetworkData == job.NetworkDataOff {
		return nil
	}
	inv := dp.Inventory
	if inv == nil {
		dp.log.Info("no network_data.json in the ConfigDrive: no inventory names the boot NIC")
		return nil
	}
	if inv.BootMAC != "" {
		for _, n := range inv.NICs {
			if n.MAC == inv.BootMAC {
				return []string{n.MAC}
			}
		}
	}
	dp.warn(dp.res, job.StepPreflight, job.WarnNoBootNIC)
	return nil
}
