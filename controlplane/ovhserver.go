package controlplane

import (
	"crypto/sha1"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"

	"github.com/byoi/byoi/controlplane/store"
	"github.com/byoi/byoi/job"
)

// GET and PUT /dedicated/server/{serviceName} with every field of OVH's
// dedicated.server.DedicatedWithIAM (issue 24), so that Terraform, OVH's
// CLI and the Node.js and Python clients read what they expect. Each value
// is one of three kinds, and never a made-up measurement:
//
//   - byoi-api's own: name, serverId, bootId, efiBootloaderPath, os, iam;
//   - the customer's, kept as set by PUT and returned (monitoring, state,
//     noIntervention, bootScript, rescueMail, rescueSshKey, rootDevice):
//     byoi-api acts on bootId and efiBootloaderPath only;
//   - the operator's facts (--server-facts: datacenter, ip, rack,
//     linkSpeed...), null when not given. powerState is null until the
//     power driver (issue 25) reads it from the server's BMC.

// serverView is OVH's dedicated.server.DedicatedWithIAM, fields in OVH's
// (alphabetical) order.
type serverView struct {
	AvailabilityZone  *string `json:"availabilityZone"`
	BootID            int64   `json:"bootId"`
	BootScript        *string `json:"bootScript"`
	CommercialRange   *string `json:"commercialRange"`
	Datacenter        *string `json:"datacenter"`
	EFIBootloaderPath *string `json:"efiBootloaderPath"`
	IAM               iamView `json:"iam"`
	IP                *string `json:"ip"`
	LinkSpeed         *int64  `json:"linkSpeed"`
	Monitoring        bool    `json:"monitoring"`
	Name              string  `json:"name"`
	NewUpgradeSystem  bool    `json:"newUpgradeSystem"`
	NoIntervention    bool    `json:"noIntervention"`
	OS                string  `json:"os"`
	PowerState        *string `json:"powerState"`
	ProfessionalUse   bool    `json:"professionalUse"`
	Rack              *string `json:"rack"`
	Region            *string `json:"region"`
	RescueMail        *string `json:"rescueMail"`
	RescueSSHKey      *string `json:"rescueSshKey"`
	Reverse           *string `json:"reverse"`
	RootDevice        *string `json:"rootDevice"`
	ServerID          int64   `json:"serverId"`
	State             string  `json:"state"`
	SupportLevel      *string `json:"supportLevel"`
}

// iamView is OVH's iam.ResourceMetadata. The id is a UUID derived from the
// server's name (stable across instances and restarts), the urn OVH's
// form with "byoi" for the region.
type iamView struct {
	DisplayName *string           `json:"displayName"`
	ID          string            `json:"id"`
	Tags        map[string]string `json:"tags"`
	URN         string            `json:"urn"`
}

func iamOf(name string) iamView {
	h := sha1.Sum([]byte("byoi dedicated server\x00" + name))
	h[6] = h[6]&0x0f | 0x50 // version 5 (name-based, SHA-1)
	h[8] = h[8]&0x3f | 0x80 // RFC 4122 variant
	id := fmt.Sprintf("%x-%x-%x-%x-%x", h[0:4], h[4:6], h[6:8], h[8:10], h[10:16])
	return iamView{DisplayName: &name, ID: id, URN: "urn:v1:byoi:resource:dedicatedServer:" + name}
}

// serverProps are the server's properties a customer sets by PUT beyond
// bootId and efiBootloaderPath (store.Server.Props). Nil strings are
// unset (null); a PUT of "" unsets them, as Terraform sends to clear one.
type serverProps struct {
	Monitoring     bool    `json:"monitoring,omitempty"`
	NoIntervention bool    `json:"noIntervention,omitempty"`
	State          string  `json:"state,omitempty"`
	BootScript     *string `json:"bootScript,omitempty"`
	RescueMail     *string `json:"rescueMail,omitempty"`
	RescueSSHKey   *string `json:"rescueSshKey,omitempty"`
	RootDevice     *string `json:"rootDevice,omitempty"`
}

func propsOf(sv store.Server) (serverProps, error) {
	var p serverProps
	if sv.Props != nil {
		if err := json.Unmarshal(sv.Props, &p); err != nil {
			return p, fmt.Errorf("server %d props: %w", sv.ID, err)
		}
	}
	if p.State == "" {
		p.State = "ok"
	}
	return p, nil
}

func (s *Server) getServer(c *call) (int, any, error) {
	sv := c.server
	p, err := propsOf(sv)
	if err != nil {
		return 0, nil, err
	}
	os := "none_64"
	if d, err := s.st.CurrentDeployment(c.r.Context(), sv.ID); err == nil && d.Status == store.StatusDone {
		os = job.OSByoi
	}
	f := s.cfg.Facts.For(sv.Name)
	v := serverView{
		AvailabilityZone: nullable(f.AvailabilityZone), BootID: sv.BootID, BootScript: p.BootScript,
		CommercialRange: nullable(f.CommercialRange), Datacenter: nullable(f.Datacenter),
		EFIBootloaderPath: nullable(sv.EFIBootloaderPath), IAM: iamOf(sv.Name), IP: nullable(f.IP),
		Monitoring: p.Monitoring, Name: sv.Name, NoIntervention: p.NoIntervention, OS: os,
		Rack: nullable(f.Rack), Region: nullable(f.Region), RescueMail: p.RescueMail, RescueSSHKey: p.RescueSSHKey,
		Reverse: nullable(f.Reverse), RootDevice: p.RootDevice, ServerID: sv.ID, State: p.State,
		SupportLevel: nullable(f.SupportLevel),
		PowerState:   s.powerState(c.r.Context(), sv.ID), // issue 25: the BMC's, cached; null without one
	}
	if f.LinkSpeed > 0 {
		v.LinkSpeed = &f.LinkSpeed
	}
	return http.StatusOK, v, nil
}

// putServerBody is OVH's PUT body, dedicated.server.Dedicated's writable
// fields. Every field may be null (no change), as Terraform's
// ovh_dedicated_server sends them.
type putServerBody struct {
	BootID            *int64  `json:"bootId"`
	BootScript        *string `json:"bootScript"`
	EFIBootloaderPath *string `json:"efiBootloaderPath"`
	Monitoring        *bool   `json:"monitoring"`
	NoIntervention    *bool   `json:"noIntervention"`
	RescueMail        *string `json:"rescueMail"`
	RescueSSHKey      *string `json:"rescueSshKey"`
	RootDevice        *string `json:"rootDevice"`
	State             *string `json:"state"`
}

// maxBootScript bounds bootScript (the PUT body is 4 KiB in all).
const maxBootScript = 4 << 10

// serverStates is OVH's dedicated.server.StateEnum.
var serverStates = map[string]bool{"ok": true, "error": true, "hacked": true, "hackedBlocked": true}

func (s *Server) putServer(c *call) (int, any, error) {
	var b putServerBody
	if err := decodeStrict(c.body, &b); err != nil {
		return 0, nil, fail(kBadRequest, job.APIBadRequest, err.Error())
	}
	// Check everything before changing anything.
	if b.BootID != nil {
		if _, ok := bootType(*b.BootID); !ok {
			return 0, nil, fail(kNotFound, job.APINotFound, "bootId = "+strconv.FormatInt(*b.BootID, 10))
		}
	}
	if b.EFIBootloaderPath != nil {
		if err := job.ValidateEFIBootloaderPath(*b.EFIBootloaderPath); err != nil {
			return 0, nil, err
		}
	}
	if b.State != nil && !serverStates[*b.State] {
		return 0, nil, fail(kBadRequest, job.APIBadParam, "state", "one of error, hacked, hackedBlocked, ok")
	}
	for _, f := range []struct {
		name, what string
		v          *string
		max        int
	}{
		{"bootScript", "an iPXE script of at most 4 KiB, without NUL", b.BootScript, maxBootScript},
		{"rescueMail", "an e-mail address", b.RescueMail, 254},
		{"rootDevice", "a device path of at most 255 bytes, without control characters", b.RootDevice, 255},
	} {
		if f.v == nil {
			continue
		}
		bad := len(*f.v) > f.max || strings.ContainsRune(*f.v, 0)
		switch f.name {
		case "rescueMail":
			local, domain, ok := strings.Cut(*f.v, "@")
			bad = bad || *f.v != "" && (!ok || local == "" || domain == "" || strings.ContainsAny(*f.v, " \t\r\n<>,;"))
		case "rootDevice":
			bad = bad || strings.ContainsFunc(*f.v, func(r rune) bool { return r < 0x20 || r == 0x7f })
		}
		if bad {
			return 0, nil, fail(kBadRequest, job.APIBadParam, f.name, f.what)
		}
	}
	if b.RescueSSHKey != nil && *b.RescueSSHKey != "" {
		if _, err := job.ParseSSHPublicKey(*b.RescueSSHKey); err != nil {
			return 0, nil, fail(kBadRequest, job.APIBadParam, "rescueSshKey", "one OpenSSH public key line")
		}
	}
	ctx := c.r.Context()
	if b.BootID != nil {
		// PUT bootId only changes the next boot, as at OVH: POST .../reboot
		// reboots (Terraform PUTs, then POSTs /reboot).
		if err := s.st.SetBoot(ctx, c.server.ID, *b.BootID); err != nil {
			return 0, nil, err
		}
	}
	if b.EFIBootloaderPath != nil {
		if err := s.st.SetEFIBootloaderPath(ctx, c.server.ID, *b.EFIBootloaderPath); err != nil {
			return 0, nil, err
		}
	}
	if b.BootScript == nil && b.Monitoring == nil && b.NoIntervention == nil && b.RescueMail == nil && b.RescueSSHKey == nil && b.RootDevice == nil && b.State == nil {
		return http.StatusOK, nil, nil
	}
	// The rest is one document, read, changed and written back: of two
	// PUTs of different properties racing, the later write wins whole.
	p, err := propsOf(c.server)
	if err != nil {
		return 0, nil, err
	}
	clear := func(v *string) *string {
		if v == nil || *v == "" {
			return nil
		}
		return v
	}
	if b.BootScript != nil {
		p.BootScript = clear(b.BootScript)
	}
	if b.RescueMail != nil {
		p.RescueMail = clear(b.RescueMail)
	}
	if b.RescueSSHKey != nil {
		p.RescueSSHKey = clear(b.RescueSSHKey)
	}
	if b.RootDevice != nil {
		p.RootDevice = clear(b.RootDevice)
	}
	if b.Monitoring != nil {
		p.Monitoring = *b.Monitoring
	}
	if b.NoIntervention != nil {
		p.NoIntervention = *b.NoIntervention
	}
	if b.State != nil {
		p.State = *b.State
	}
	if p.State == "ok" {
		p.State = "" // the default
	}
	doc, err := json.Marshal(p)
	if err != nil {
		return 0, nil, err
	}
	if err := s.st.SetServerProps(ctx, c.server.ID, doc); err != nil {
		return 0, nil, err
	}
	return http.StatusOK, nil, nil
}
