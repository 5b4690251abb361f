package controlplane

import (
	"bytes"
	"context"
	"net/http"
	"strconv"
	"time"

	"github.com/byoi/byoi/controlplane/store"
	"github.com/byoi/byoi/job"
)

// The routes OVH's own tools call besides the BYOI ones (issue 24):
// terraform-provider-ovh's data "ovh_dedicated_server" (ips,
// virtualNetworkInterface), its reboot_task and bootid_on_destroy (reboot,
// task), OVH's CLI baremetal commands (the task list, boot options,
// specifications/network, serviceInfos, authenticationSecret). Each
// answers in OVH's shapes (field names, types, enums and nullability of
// OVH's published schema) with what byoi-api knows, and empty lists or
// null where byoi has nothing of the kind.

func (s *Server) ovhRoutes(p, d string) {
	s.handle(p+"/auth/details", map[string]endpoint{"GET": {auth: authCustomer, h: s.authDetails}})
	s.handle(d+"/ips", map[string]endpoint{"GET": {auth: authCustomer, h: s.listIPs}})
	s.handle(d+"/virtualNetworkInterface", map[string]endpoint{"GET": {auth: authCustomer, h: s.listVNIs}})
	s.handle(d+"/virtualNetworkInterface/{uuid}", map[string]endpoint{"GET": {auth: authCustomer, h: s.getVNI}})
	s.handle(d+"/task", map[string]endpoint{"GET": {auth: authCustomer, h: s.listTasks}})
	s.handle(d+"/boot/{bootId}/option", map[string]endpoint{"GET": {auth: authCustomer, h: s.listBootOptions}})
	s.handle(d+"/boot/{bootId}/option/{option}", map[string]endpoint{"GET": {auth: authCustomer, h: s.getBootOption}})
	s.handle(d+"/specifications/network", map[string]endpoint{"GET": {auth: authCustomer, h: s.networkSpecs}})
	s.handle(d+"/serviceInfos", map[string]endpoint{"GET": {auth: authCustomer, h: s.serviceInfos}})
	s.handle(d+"/authenticationSecret", map[string]endpoint{"POST": {auth: authCustomer, h: s.authenticationSecret}})
	s.handle(d+"/reboot", map[string]endpoint{"POST": {auth: authCustomer, h: s.postReboot}})
}

// authDetails is OVH's GET /auth/details (auth.Details): who the caller
// is. terraform-provider-ovh calls it when it starts, to check its
// credentials. A byoi customer may use the whole API on its own servers:
// every method on every path, as OVH's allowedRoutes say it.
type authDetailsView struct {
	Account       string       `json:"account"`
	AllowedRoutes []accessRule `json:"allowedRoutes"`
	Description   *string      `json:"description"`
	Identities    []string     `json:"identities"`
	Method        string       `json:"method"`
	Roles         []string     `json:"roles"`
	User          *string      `json:"user"`
}

type accessRule struct {
	Method string `json:"method"`
	Path   string `json:"path"`
}

func (s *Server) authDetails(c *call) (int, any, error) {
	all := []accessRule{{"DELETE", "/*"}, {"GET", "/*"}, {"POST", "/*"}, {"PUT", "/*"}}
	return http.StatusOK, authDetailsView{Account: c.customer.Name, AllowedRoutes: all, Identities: []string{"urn:v1:byoi:identity:account:" + c.customer.Name},
		Method: "account", Roles: []string{}}, nil
}

// listIPs is GET .../ips: the server's IP blocks from the operator's facts
// (none: an empty list).
func (s *Server) listIPs(c *call) (int, any, error) {
	return http.StatusOK, s.cfg.Facts.For(c.server.Name).ipBlocks(), nil
}

// vniModes is OVH's dedicated.virtualNetworkInterface.VirtualNetworkInterfaceModeEnum.
var vniModes = map[string]bool{"public": true, "vrack": true, "vrack_aggregation": true}

// listVNIs is GET .../virtualNetworkInterface: byoi has no OVH virtual
// network interfaces (OLA, vRack), so the list is empty, whatever the
// filters (checked as OVH types them). Terraform's data source then says
// the server is "on legacy network infrastructure", and goes on.
func (s *Server) listVNIs(c *call) (int, any, error) {
	q := c.r.URL.Query()
	if v := q.Get("enabled"); v != "" && v != "true" && v != "false" {
		return 0, nil, fail(kBadRequest, job.APIBadParam, "enabled", "true or false")
	}
	if v := q.Get("mode"); v != "" && !vniModes[v] {
		return 0, nil, fail(kBadRequest, job.APIBadParam, "mode", "public, vrack or vrack_aggregation")
	}
	return http.StatusOK, []string{}, nil
}

func (s *Server) getVNI(c *call) (int, any, error) {
	return 0, nil, fail(kNotFound, job.APINotFound, "uuid = "+truncate(c.r.PathValue("uuid"), 64))
}

// taskFunctions is OVH's dedicated.TaskFunctionEnum (the filter of the
// task list); byoi's tasks are reinstallServer and hardReboot.
var taskFunctions = setOf("INFRA_002_VirtualNetworkInterface", "INFRA_002_VirtualNetworkInterface_group", "INFRA_002_VirtualNetworkInterface_ungroup",
	"INFRA_ONE_NETWORK_ONEAPI_VirtualNetworkInterface_group", "INFRA_ONE_NETWORK_ONEAPI_VirtualNetworkInterface_ungroup",
	"INFRA_ONE_NETWORK_VirtualNetworkInterface_group", "INFRA_ONE_NETWORK_VirtualNetworkInterface_ungroup", "addVirtualMac",
	"addWindowSplaFromExistingSerial", "applyBackupFtpAcls", "applyBackupFtpQuota", "bypassAntiDDosGame", "changePasswordBackupFTP",
	"changeRipeOrg", "checkAndReleaseIp", "createBackupFTP", "createOrUpdateRipeOrg", "createPrivateNetwork", "disableFirewall",
	"enableFirewall", "genericMoveFloatingIp", "hardReboot", "hardware_update", "ipmi/configureSGX", "migrateBackupFTP",
	"moveFloatingIp", "moveVirtualMac", "reagregateBlock", "rebootPower8To", "reinstallServer", "releaseIp", "removeBackupFTP",
	"removeVirtualMac", "requestAccessIPMI", "resetIPMI", "resetIPMISession", "testIPMIhttp", "testIPMIpassword", "testIPMIping",
	"virtualMacAdd", "virtualMacDelete")

// taskStatuses is OVH's dedicated.TaskStatusEnum.
var taskStatuses = setOf(store.TaskCancelled, store.TaskCustomerError, store.TaskDoing, store.TaskDone, store.TaskInit, store.TaskOVHError, store.TaskTodo)

func setOf(vs ...string) map[string]bool {
	m := make(map[string]bool, len(vs))
	for _, v := range vs {
		m[v] = true
	}
	return m
}

// listTasks is GET .../task?function=&status=: the server's task ids,
// oldest first.
func (s *Server) listTasks(c *call) (int, any, error) {
	q := c.r.URL.Query()
	fn, st := q.Get("function"), q.Get("status")
	if fn != "" && !taskFunctions[fn] {
		return 0, nil, fail(kBadRequest, job.APIBadParam, "function", "a dedicated.TaskFunctionEnum value (reinstallServer, hardReboot, ...)")
	}
	if st != "" && !taskStatuses[st] {
		return 0, nil, fail(kBadRequest, job.APIBadParam, "status", "one of cancelled, customerError, doing, done, init, ovhError, todo")
	}
	ids, err := s.st.Tasks(c.r.Context(), c.server.ID, fn, st)
	if err != nil {
		return 0, nil, err
	}
	return http.StatusOK, ids, nil
}

// taskComment is a task's comment: OVH's words for its function, and for
// a reboot waiting for hands or seen, what happened.
func taskComment(t store.Task) string {
	if t.Function != store.FunctionHardReboot {
		return job.Text(job.MsgTaskReinstall)
	}
	if t.Status == store.TaskDone {
		return job.Text(job.MsgRebootSeen)
	}
	// Until a power driver acts (issue 25), a reboot task is only ever
	// todo (waiting for hands) or done (seen).
	return job.Text(job.MsgRebootByHand)
}

// bootID is the path's boot id, or 404.
func bootID(c *call) (int64, error) {
	id, err := strconv.ParseInt(c.r.PathValue("bootId"), 10, 64)
	if _, ok := bootType(id); err != nil || !ok {
		return 0, fail(kNotFound, job.APINotFound, "bootId = "+truncate(c.r.PathValue("bootId"), 20))
	}
	return id, nil
}

// listBootOptions is GET .../boot/{bootId}/option: OVH's netboot options
// (cpufamily, grsec, ipv6, smp) are of OVH's kernels; byoi's boots have
// none.
func (s *Server) listBootOptions(c *call) (int, any, error) {
	if _, err := bootID(c); err != nil {
		return 0, nil, err
	}
	return http.StatusOK, []string{}, nil
}

func (s *Server) getBootOption(c *call) (int, any, error) {
	if _, err := bootID(c); err != nil {
		return 0, nil, err
	}
	return 0, nil, fail(kNotFound, job.APINotFound, "option = "+truncate(c.r.PathValue("option"), 20))
}

// networkSpecs is OVH's dedicated.server.NetworkSpecifications: the
// routing and the link speed from the operator's facts; byoi sells no
// bandwidth, traffic quota, OLA, vRack or virtual MAC, so those are null
// (vmac, which OVH's schema does not let be null: not supported, quota 0).
type networkSpecs struct {
	Bandwidth  any            `json:"bandwidth"`
	Connection *unitAndValue  `json:"connection"`
	OLA        any            `json:"ola"`
	Routing    routingDetails `json:"routing"`
	Switching  any            `json:"switching"`
	Traffic    any            `json:"traffic"`
	VMAC       vmacDetails    `json:"vmac"`
	VRack      any            `json:"vrack"`
}

type unitAndValue struct {
	Unit  string `json:"unit"`
	Value int64  `json:"value"`
}

type routingDetails struct {
	IPv4 *routingIPv4 `json:"ipv4"`
	IPv6 *routingIPv4 `json:"ipv6"`
}

type routingIPv4 struct {
	Gateway *string `json:"gateway"`
	IP      *string `json:"ip"`
	Network *string `json:"network"`
}

type vmacDetails struct {
	Quota     int64 `json:"quota"`
	Supported bool  `json:"supported"`
}

func (s *Server) networkSpecs(c *call) (int, any, error) {
	f := s.cfg.Facts.For(c.server.Name)
	v := networkSpecs{VMAC: vmacDetails{}}
	if f.IP != "" || f.Gateway != "" || f.Network != "" {
		v.Routing.IPv4 = &routingIPv4{Gateway: nullable(f.Gateway), IP: nullable(f.IP), Network: nullable(f.Network)}
	}
	if f.LinkSpeed > 0 {
		v.Connection = &unitAndValue{Unit: "Mbps", Value: f.LinkSpeed}
	}
	return http.StatusOK, v, nil
}

// serviceInfo is OVH's services.Service. byoi-api bills nothing: the
// service is the server (its id, its name, since its creation), its
// contacts the customer, and what only billing knows (expiration,
// renewal type, engagement) is null; renew is all false, not null, because
// OVH's CLI reads renew.automatic.
type serviceInfo struct {
	CanDeleteAtExpiration bool      `json:"canDeleteAtExpiration"`
	ContactAdmin          string    `json:"contactAdmin"`
	ContactBilling        string    `json:"contactBilling"`
	ContactTech           string    `json:"contactTech"`
	Creation              string    `json:"creation"`
	Domain                string    `json:"domain"`
	EngagedUpTo           *string   `json:"engagedUpTo"`
	Expiration            *string   `json:"expiration"`
	PossibleRenewPeriod   []int64   `json:"possibleRenewPeriod"`
	Renew                 renewType `json:"renew"`
	RenewalType           *string   `json:"renewalType"`
	ServiceID             int64     `json:"serviceId"`
	Status                string    `json:"status"`
}

type renewType struct {
	Automatic          bool   `json:"automatic"`
	DeleteAtExpiration bool   `json:"deleteAtExpiration"`
	Forced             bool   `json:"forced"`
	ManualPayment      *bool  `json:"manualPayment"`
	Period             *int64 `json:"period"`
}

func (s *Server) serviceInfos(c *call) (int, any, error) {
	sv, cu := c.server, c.customer.Name
	return http.StatusOK, serviceInfo{ContactAdmin: cu, ContactBilling: cu, ContactTech: cu, Creation: sv.CreatedAt.UTC().Format(time.DateOnly),
		Domain: sv.Name, ServiceID: sv.ID, Status: "ok"}, nil
}

// authenticationSecret is POST .../authenticationSecret: the secrets OVH
// sets on the systems it installs (a root password, a panel's login).
// byoi installs the customer's own image and sets none (access is the
// customer's: the ConfigDrive's SSH key, their user data), so the list is
// empty. OVH's CLI calls it after `reinstall --wait`.
func (s *Server) authenticationSecret(c *call) (int, any, error) {
	if err := noBody(c); err != nil {
		return 0, nil, err
	}
	return http.StatusOK, []struct{}{}, nil
}

// noBody accepts the empty bodies OVH's clients send to POSTs that take
// none: nothing (go-ovh, Node.js), {} or null.
func noBody(c *call) error {
	switch string(bytes.TrimSpace(c.body)) {
	case "", "{}", "null":
		return nil
	}
	return fail(kBadRequest, job.APIBadRequest, "this request takes no body")
}

// postReboot is POST .../reboot: OVH's hard reboot, a task hardReboot
// polled through task/{id}. It reboots into the server's next boot (bootId,
// which PUT sets without rebooting, as at OVH).
func (s *Server) postReboot(c *call) (int, any, error) {
	if err := noBody(c); err != nil {
		return 0, nil, err
	}
	t, err := s.requestReboot(c.r.Context(), c.server)
	if err != nil {
		return 0, nil, err
	}
	v := viewTask(t)
	v.Comment = s.taskCommentFor(c.r.Context(), t)
	return http.StatusOK, v, nil
}

// requestReboot creates the task of a reboot request. With the none
// driver (no BMC byoi-api can drive) nothing can power-cycle the server:
// the task is "todo", its comment says the server waits to be rebooted by
// hand, and it becomes "done" when the server is seen booting (bootSeen:
// its network boot script is fetched, or its rescue agent posts its
// inventory). Where a driver can act (issue 25), the power round claims
// the task through the store and runs power.Reboot (one-time network boot,
// power cycle or on), ending it done or ovhError with the driver's catalog
// message (queueReboot, power_tasks.go). Issue 22: a reboot request while
// the server boots rescue arms it for a new agent token.
func (s *Server) requestReboot(ctx context.Context, sv store.Server) (store.Task, error) {
	now := s.cfg.Clock.Now()
	t, err := s.st.CreateTask(ctx, store.Task{ServerID: sv.ID, Function: store.FunctionHardReboot, Status: store.TaskTodo, StartDate: now})
	if err != nil {
		return t, err
	}
	if sv.BootID == store.BootRescue {
		// The rescue running now goes away with the reboot: the next
		// rescue script mints a new token even though the agent was
		// heard from a moment ago (store.MayMint).
		if err := s.st.ArmServer(ctx, sv.ID, store.ArmedReboot); err != nil {
			return t, err
		}
	}
	queued, err := s.queueReboot(ctx, sv, 0, t.ID)
	if err != nil {
		return t, err
	}
	if queued {
		s.log.Info("reboot requested: byoi-api reboots the server through its BMC", "server", sv.Name, "task", t.ID, "boot", sv.BootID)
		return t, nil
	}
	s.log.Info("reboot requested: waiting for a reboot by hand", "server", sv.Name, "task", t.ID, "power", "none", "boot", sv.BootID)
	return t, nil
}

// bootSeen ends the server's reboot tasks waiting for hands: the server
// was seen booting (how says by what).
func (s *Server) bootSeen(ctx context.Context, sv store.Server, how string) {
	n, err := s.st.FinishTasks(ctx, sv.ID, store.FunctionHardReboot, s.cfg.Clock.Now())
	if err != nil {
		s.log.Error("ending reboot tasks failed", "server", sv.Name, "err", err)
		return
	}
	if n > 0 {
		s.log.Info("reboot seen", "server", sv.Name, "by", how, "tasks", n)
	}
}
