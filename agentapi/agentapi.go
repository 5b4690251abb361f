// Package agentapi is the contract between the rescue agent (byoi agent)
// and the control plane (byoi-api): the paths of the agent API, its
// request and response bodies, and their limits. It imports only the
// standard library and package job, so both sides share it without the
// control plane carrying the disk stack.
//
// The agent authenticates with its server's token ("Authorization: Bearer
// <token>"); every path names the server, and a token opens only its own
// server's paths. All bodies are JSON.
//
//	POST   {Prefix}/servers/{server}/inventory                 Inventory         → 204
//	GET    {Prefix}/servers/{server}/job                       -                 → 200 Assignment, or 204 (nothing to do; Retry-After)
//	POST   {Prefix}/servers/{server}/deployments/{id}/attempts -                 → 200 Attempt
//	POST   {Prefix}/servers/{server}/deployments/{id}/events   EventBatch        → 200 Ack
//	POST   {Prefix}/servers/{server}/boot                      BootInfo          → 204
//	GET    {Prefix}/servers/{server}/deployments/{id}/image    -                 → 200/206 the image (Range), 404 not cached, 503 busy (Retry-After)
//
// An Assignment is re-served until the deployment ends, so an agent that
// restarts (a crash, a power cycle) gets it again; it then opens a new
// attempt, and the control plane records in the status history that the
// deployment started over. Events carry the attempt they belong to: events
// of an older attempt are refused (409), those of a deployment that was
// deleted or has ended are refused with 410 Gone, and the agent stops.
// An EventBatch with no events is a heartbeat. The final event (status done
// or error) is acknowledged only once stored; the agent reboots after that.
// Sending the same events twice (a retry after a lost answer) is not an
// error: events are idempotent by (deployment, attempt, seq).
package agentapi

import (
	"encoding/json"
	"fmt"
	"strings"

	"github.com/byoi/byoi/job"
)

// Prefix is where the agent API lives, beside the customer API (/1.0, /v1).
const Prefix = "/agent/v1"

// Limits on request bodies of the agent API.
const (
	MaxInventoryBody = 1 << 20
	MaxEventsBody    = 1 << 20
	MaxBatchEvents   = 256
	MaxDiskGroups    = 64
)

// Boot modes, as OVH's specifications/hardware names them.
const (
	BootModeLegacy = "legacy"
	BootModeUEFI   = "uefi"
)

// Paths of the agent API, for a server name.
func InventoryPath(server string) string { return Prefix + "/servers/" + server + "/inventory" }
func JobPath(server string) string       { return Prefix + "/servers/" + server + "/job" }
func AttemptsPath(server string, deployment int64) string {
	return fmt.Sprintf("%s/servers/%s/deployments/%d/attempts", Prefix, server, deployment)
}
func EventsPath(server string, deployment int64) string {
	return fmt.Sprintf("%s/servers/%s/deployments/%d/events", Prefix, server, deployment)
}

// ImagePath is where the agent reads its deployment's image from the
// control plane's image cache (issue 28): the image's bytes (200, or 206
// for a Range request; a strong ETag for If-Range), authenticated by the
// agent token. 404: the cache does not serve this image (no cache, no
// checksum, the cache's download failed, no room): download it from its
// own URL. 503 with Retry-After: no byte is available yet (the cache waits
// for the origin): ask again. An Assignment names this path in ImagePath
// when the cache serves the job.
func ImagePath(server string, deployment int64) string {
	return fmt.Sprintf("%s/servers/%s/deployments/%d/image", Prefix, server, deployment)
}

// BootPath is where the agent says how its server boots the deployed disk.
func BootPath(server string) string { return Prefix + "/servers/" + server + "/boot" }

// BootedPrefix is the path of the deployed system's phone home (issue
// 25): BootedPrefix + token, POSTed once by cloud-init; the token is the
// only credential and can only mark its deployment booted.
const BootedPrefix = Prefix + "/booted/"

// BootedPath is the phone-home path of a token.
func BootedPath(token string) string { return BootedPrefix + token }

// LogsPath is where a failed deployment's agent posts its log tails
// (issue 25).
func LogsPath(server string, deployment int64) string {
	return fmt.Sprintf("%s/servers/%s/deployments/%d/logs", Prefix, server, deployment)
}

// MaxLogText bounds the two tails of a LogTails together (the kernel's
// and the agent's, redacted by the agent); MaxLogsBody is its body
// limit (JSON's \u escapes make a byte at most 6, plus the envelope).
const (
	MaxLogText  = 16 << 10
	MaxLogsBody = 6*MaxLogText + 1024
)

// LogTails is the end of the kernel log (dmesg) and of the agent's own
// log, taken when a deployment failed, redacted by the agent (no token,
// header value or user data), shown to the operator and the customer.
type LogTails struct {
	Attempt int    `json:"attempt"`
	Kernel  string `json:"kernel"`
	Agent   string `json:"agent"`
}

// Validate checks the bounds.
func (l LogTails) Validate() error {
	if l.Attempt < 1 {
		return fmt.Errorf("attempt must be 1 or more")
	}
	if len(l.Kernel)+len(l.Agent) > MaxLogText {
		return fmt.Errorf("the log tails are %d bytes, at most %d", len(l.Kernel)+len(l.Agent), MaxLogText)
	}
	return nil
}

// BootInfo is how the server will boot the disk a deployment wrote, posted
// by the agent after the final "done" was acknowledged and before it
// reboots. The control plane's network boot script uses it: under legacy
// BIOS, DiskKey selects the deployed disk among the server's disks (the
// BIOS numbers them in its own order); under UEFI the agent has written a
// boot entry after the network one (EFIEntry says which), and the script
// only has to exit to the firmware.
type BootInfo struct {
	DeploymentID int64 `json:"deploymentId"`
	// DiskKey identifies the deployed disk: "mbr:" and the MBR disk
	// signature (8 hex digits, as the 4 bytes at offset 440 read in
	// order), or "gpt:" and the GPT disk GUID (32 hex digits, the 16 bytes
	// at LBA 1 + 56 in order). "" when there is none usable (an MBR
	// signature of zero).
	DiskKey string `json:"diskKey,omitempty"`
	// EFIEntry describes the UEFI boot entry written ("Boot000B
	// \EFI\debian\grubx64.efi"); "" under legacy BIOS.
	EFIEntry string `json:"efiEntry,omitempty"`
}

// Validate checks a BootInfo received from an agent.
func (b *BootInfo) Validate() error {
	if b.DeploymentID < 1 {
		return fmt.Errorf("deploymentId must be 1 or more")
	}
	if b.DiskKey != "" {
		kind, hexKey, ok := strings.Cut(b.DiskKey, ":")
		want := map[string]int{"mbr": 8, "gpt": 32}[kind]
		if !ok || want == 0 || len(hexKey) != want {
			return fmt.Errorf("diskKey must be mbr:<8 hex digits> or gpt:<32 hex digits>")
		}
		for i := 0; i < len(hexKey); i++ {
			if !isHex(hexKey[i]) {
				return fmt.Errorf("diskKey must be lower-case hex")
			}
		}
	}
	if len(b.EFIEntry) > 1024 {
		return fmt.Errorf("efiEntry too long")
	}
	return nil
}

// Inventory is what the agent tells about its server: how it booted and its
// disk groups (OVH's specifications/hardware shape), for the customer's GET
// specifications/hardware and to check a job's diskGroupId.
type Inventory struct {
	BootMode     string      `json:"bootMode"` // legacy or uefi
	DiskGroups   []DiskGroup `json:"diskGroups"`
	AgentVersion string      `json:"agentVersion,omitempty"`
	// MACs are the server's network interfaces' addresses (lower-case,
	// colon-separated), for network boot by MAC.
	MACs []string `json:"macs,omitempty"`
	// BootMAC is the MAC of the NIC the rescue booted from (BOOTIF= on
	// its kernel command line, else the single NIC that is up), one of
	// NICs; empty when unknown. The ConfigDrive's network_data.json gives
	// it DHCP (issue 26).
	BootMAC string `json:"bootMac,omitempty"`
	// Features are what this agent can do beyond the base contract (the
	// Feature* constants), so the control plane refuses a job an older
	// agent would fail: e.g. a reinstall without imageType needs
	// FeatureDetectImageType.
	Features []string `json:"features,omitempty"`
	// Beyond OVH's shape (specifications/hardware shows none of it): each
	// eligible disk with the driver of its controller, each NIC with its
	// driver, and the network and storage controllers no driver claimed
	// (a NIC or an HBA the rescue cannot drive).
	Disks     []InventoryDisk   `json:"disks,omitempty"`
	NICs      []InventoryNIC    `json:"nics,omitempty"`
	Unclaimed []UnclaimedDevice `json:"unclaimedDevices,omitempty"`
}

// Agent features (Inventory.Features).
const (
	// FeatureDetectImageType: the agent detects the image type from the
	// image's first bytes when the job gives none (issue 24).
	FeatureDetectImageType = "detectImageType"
)

// MaxFeatures bounds Inventory.Features.
const MaxFeatures = 32

// HasFeature reports whether the inventory lists feature f.
func (inv *Inventory) HasFeature(f string) bool {
	for _, g := range inv.Features {
		if g == f {
			return true
		}
	}
	return false
}

// InventoryDisk is one disk of the inventory.
type InventoryDisk struct {
	Name        string `json:"name"`
	DiskGroupID int    `json:"diskGroupId"`
	Model       string `json:"model,omitempty"`
	Size        int64  `json:"size"`
	// Driver is the driver of the disk's controller (nvme, ahci,
	// megaraid_sas, ...); Controller that device's sysfs name.
	Driver     string `json:"driver,omitempty"`
	Controller string `json:"controller,omitempty"`
	RAIDVolume bool   `json:"raidVolume,omitempty"`
}

// InventoryNIC is one network interface of the inventory.
type InventoryNIC struct {
	Name   string `json:"name"`
	MAC    string `json:"mac"`
	Driver string `json:"driver,omitempty"`
	PCI    string `json:"pci,omitempty"` // vendor:device
}

// UnclaimedDevice is a network or storage controller no driver claimed.
type UnclaimedDevice struct {
	Slot    string `json:"slot"`    // PCI address
	ID      string `json:"id"`      // vendor:device
	Class   string `json:"class"`   // "Ethernet controller"
	Message string `json:"message"` // "PCI 8086:1572 Ethernet controller: no driver in the rescue"
}

// MaxInventoryItems bounds each of an inventory's lists.
const MaxInventoryItems = 256

// DiskGroup is one entry of OVH's diskGroups.
type DiskGroup struct {
	DiskGroupID    int      `json:"diskGroupId"`
	Description    string   `json:"description"`
	DiskSize       DiskSize `json:"diskSize"`
	DiskType       string   `json:"diskType"`
	NumberOfDisks  int      `json:"numberOfDisks"`
	RAIDController *string  `json:"raidController"`
}

// DiskSize is a size with its unit ("GB").
type DiskSize struct {
	Unit  string `json:"unit"`
	Value int64  `json:"value"`
}

// Validate checks an inventory received from an agent.
func (inv *Inventory) Validate() error {
	if inv.BootMode != BootModeLegacy && inv.BootMode != BootModeUEFI {
		return fmt.Errorf("bootMode must be %q or %q", BootModeLegacy, BootModeUEFI)
	}
	if len(inv.DiskGroups) > MaxDiskGroups {
		return fmt.Errorf("%d disk groups, at most %d", len(inv.DiskGroups), MaxDiskGroups)
	}
	for i, g := range inv.DiskGroups {
		if g.DiskGroupID != i+1 {
			return fmt.Errorf("disk group %d has id %d: ids are 1, 2, ... in order", i+1, g.DiskGroupID)
		}
		if len(g.Description) > 256 || len(g.DiskType) > 16 || g.NumberOfDisks < 1 || g.DiskSize.Value < 0 || len(g.DiskSize.Unit) > 8 {
			return fmt.Errorf("disk group %d is malformed", g.DiskGroupID)
		}
		if g.RAIDController != nil && len(*g.RAIDController) > 128 {
			return fmt.Errorf("disk group %d: raidController too long", g.DiskGroupID)
		}
	}
	if len(inv.AgentVersion) > 64 || len(inv.MACs) > 64 {
		return fmt.Errorf("agentVersion or macs too long")
	}
	if len(inv.Features) > MaxFeatures {
		return fmt.Errorf("%d features, at most %d", len(inv.Features), MaxFeatures)
	}
	for _, f := range inv.Features {
		if f == "" || len(f) > 64 {
			return fmt.Errorf("a feature is 1 to 64 characters")
		}
	}
	if len(inv.Disks) > MaxInventoryItems || len(inv.NICs) > MaxInventoryItems || len(inv.Unclaimed) > MaxInventoryItems {
		return fmt.Errorf("disks, nics or unclaimedDevices: at most %d each", MaxInventoryItems)
	}
	long := func(ss ...string) bool {
		for _, s := range ss {
			if len(s) > 256 {
				return true
			}
		}
		return false
	}
	for _, d := range inv.Disks {
		if long(d.Name, d.Model, d.Driver, d.Controller) || d.Size < 0 || d.DiskGroupID < 0 || d.DiskGroupID > len(inv.DiskGroups) {
			return fmt.Errorf("disk %.32q is malformed", d.Name)
		}
	}
	for _, n := range inv.NICs {
		if long(n.Name, n.MAC, n.Driver, n.PCI) {
			return fmt.Errorf("nic %.32q is malformed", n.Name)
		}
	}
	for _, u := range inv.Unclaimed {
		if long(u.Slot, u.ID, u.Class, u.Message) {
			return fmt.Errorf("unclaimed device %.32q is malformed", u.Slot)
		}
	}
	if inv.BootMAC != "" {
		if _, err := NormalizeMAC(inv.BootMAC); err != nil {
			return fmt.Errorf("bootMac: %w", err)
		}
	}
	for _, m := range inv.MACs {
		if _, err := NormalizeMAC(m); err != nil {
			return err
		}
	}
	return nil
}

// NormalizeMAC returns a MAC address as six lower-case hex pairs separated
// by colons ("52:54:00:12:34:56"); it accepts '-' separators and upper case.
func NormalizeMAC(s string) (string, error) {
	s = strings.ToLower(strings.ReplaceAll(s, "-", ":"))
	parts := strings.Split(s, ":")
	if len(parts) != 6 {
		return "", fmt.Errorf("MAC address %q is not six hex pairs", truncate(s))
	}
	for _, p := range parts {
		if len(p) != 2 || !isHex(p[0]) || !isHex(p[1]) {
			return "", fmt.Errorf("MAC address %q is not six hex pairs", truncate(s))
		}
	}
	return s, nil
}

func isHex(c byte) bool { return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' }

func truncate(s string) string {
	if len(s) > 32 {
		return s[:32]
	}
	return s
}

// Assignment is the job an agent must run: the deployment's id and the job
// body exactly as the customer posted it (either OVH shape; the agent
// parses it with job.Parse). The body holds secrets (header values, user
// data): it is sent only to the server's own agent, over the agent's
// authenticated connection, and never logged.
type Assignment struct {
	DeploymentID int64           `json:"deploymentId"`
	Job          json.RawMessage `json:"job"`
	// Attempts is how many attempts the deployment had so far (0: none;
	// 1 or more: the agent restarted during an earlier attempt).
	Attempts int `json:"attempts"`
	// EFIBootloaderPath is the server's efiBootloaderPath (OVH's server
	// property): the agent's UEFI boot entry uses it when the job names
	// none and the file is on the deployed disk's EFI System Partition.
	EFIBootloaderPath string `json:"efiBootloaderPath,omitempty"`
	// ImagePath, when set, is the path (ImagePath, on the agent API's base
	// URL) of the deployment's image in the control plane's image cache:
	// the agent reads it there first, with its agent token, and falls back
	// to the job's own URL (with the job's headers) at the byte reached
	// when the cache cannot serve it (issue 28).
	ImagePath string `json:"imagePath,omitempty"`
	// BootedURL (issue 25), when set, is where the deployed system phones
	// home once (the ConfigDrive's vendor_data.json): it holds a
	// single-use token that can only mark this deployment booted, and is
	// a secret like the agent token (never logged).
	BootedURL string `json:"bootedURL,omitempty"`
}

// Attempt is the answer to opening an attempt.
type Attempt struct {
	Attempt int `json:"attempt"`
}

// EventBatch carries events of one attempt, in seq order. No events: a
// heartbeat.
type EventBatch struct {
	Attempt int         `json:"attempt"`
	Events  []job.Event `json:"events"`
}

// Validate checks a batch received from an agent.
func (b *EventBatch) Validate() error {
	if b.Attempt < 1 {
		return fmt.Errorf("attempt must be 1 or more")
	}
	if len(b.Events) > MaxBatchEvents {
		return fmt.Errorf("%d events in a batch, at most %d", len(b.Events), MaxBatchEvents)
	}
	var last int64
	for i, e := range b.Events {
		if err := e.Validate(); err != nil {
			return fmt.Errorf("event %d: %w", i, err)
		}
		if e.Seq <= last {
			return fmt.Errorf("event %d: seq %d does not follow %d", i, e.Seq, last)
		}
		last = e.Seq
		if e.Final() && i != len(b.Events)-1 {
			return fmt.Errorf("event %d: a final event must be the last of its batch", i)
		}
	}
	return nil
}

// Ack acknowledges a batch: every event up to Seq is stored. Done is true
// when the deployment has ended (a final event was stored).
type Ack struct {
	Seq  int64 `json:"seq"`
	Done bool  `json:"done"`
}

// Error is the body of an agent API error (the customer API's shape).
type Error struct {
	Class   string `json:"class"`
	Message string `json:"message"`
}
