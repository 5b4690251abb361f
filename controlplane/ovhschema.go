package controlplane

import (
	"fmt"
	"net/http"
	"reflect"
	"regexp"
	"sort"
	"strings"

	"github.com/byoi/byoi/agentapi"
)

// OVH's API schema documents (issue 24): /1.0/ lists the APIs,
// /1.0/auth.json and /1.0/dedicated/server.json describe each, in the
// format OVH's API console and OVH's Node.js client read (its apis option
// loads them and warns about calls they do not list). The operations are
// generated from the route table (every route registered by handle under
// /1.0, with its methods and authentication); routeDocs adds what the
// table cannot know (descriptions, query and body parameters, response
// types), and a test checks that both name the same operations. The
// models' properties are generated from the Go types the handlers answer.

// route is one pattern handle registered.
type route struct {
	pattern string
	methods map[string]endpoint
}

// schemaResources are the APIs byoi-api serves, by resource path.
var schemaResources = []struct{ path, description string }{
	{"/auth", "Authentication of the API's clients"},
	{"/dedicated/server", "Dedicated servers: bring your own image (byoi)"},
	{"/me", "The customer's own API credentials (issue 22)"},
}

func (s *Server) schemaRoutes(prefix string) {
	s.mux.HandleFunc("GET "+prefix+"/{$}", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, s.schemaIndex(r, prefix))
	})
	for _, res := range schemaResources {
		s.mux.HandleFunc("GET "+prefix+res.path+".json", func(w http.ResponseWriter, r *http.Request) {
			writeJSON(w, http.StatusOK, s.schemaDoc(r, prefix, res.path))
		})
	}
}

// basePath is the API's root as the client reached it (--public-url when
// set).
func (s *Server) basePath(r *http.Request, prefix string) string {
	if s.cfg.PublicURL != "" {
		return s.cfg.PublicURL + prefix
	}
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	return scheme + "://" + r.Host + prefix
}

type schemaIndexDoc struct {
	APIs     []schemaIndexAPI `json:"apis"`
	BasePath string           `json:"basePath"`
}

type schemaIndexAPI struct {
	Path        string `json:"path"`
	Schema      string `json:"schema"`
	Description string `json:"description"`
}

func (s *Server) schemaIndex(r *http.Request, prefix string) schemaIndexDoc {
	d := schemaIndexDoc{BasePath: s.basePath(r, prefix)}
	for _, res := range schemaResources {
		d.APIs = append(d.APIs, schemaIndexAPI{Path: res.path, Schema: res.path + ".{format}", Description: res.description})
	}
	return d
}

// The document's shape (OVH's /1.0/{api}.json).
type schemaDocument struct {
	APIVersion     string                 `json:"apiVersion"`
	SwaggerVersion string                 `json:"swaggerVersion"`
	BasePath       string                 `json:"basePath"`
	ResourcePath   string                 `json:"resourcePath"`
	APIs           []schemaAPI            `json:"apis"`
	Models         map[string]schemaModel `json:"models"`
}

type schemaAPI struct {
	Path        string     `json:"path"`
	Description string     `json:"description"`
	Operations  []schemaOp `json:"operations"`
}

type schemaOp struct {
	HTTPMethod       string        `json:"httpMethod"`
	APIStatus        apiStatus     `json:"apiStatus"`
	NoAuthentication bool          `json:"noAuthentication"`
	Description      string        `json:"description"`
	Parameters       []schemaParam `json:"parameters"`
	ResponseType     string        `json:"responseType"`
	ResponseFullType string        `json:"responseFullType"`
}

type apiStatus struct {
	Value       string `json:"value"`
	Description string `json:"description"`
}

type schemaParam struct {
	Name        *string `json:"name"`
	DataType    string  `json:"dataType"`
	FullType    string  `json:"fullType"`
	ParamType   string  `json:"paramType"` // path, query, body
	Required    bool    `json:"required"`
	Description string  `json:"description"`
}

// schemaModel is a model (properties) or an enum.
type schemaModel struct {
	ID          string                    `json:"id"`
	Namespace   string                    `json:"namespace"`
	Description string                    `json:"description"`
	Properties  map[string]schemaProperty `json:"properties,omitempty"`
	Enum        []string                  `json:"enum,omitempty"`
	EnumType    string                    `json:"enumType,omitempty"`
}

type schemaProperty struct {
	Type        string  `json:"type"`
	FullType    string  `json:"fullType"`
	CanBeNull   bool    `json:"canBeNull"`
	ReadOnly    bool    `json:"readOnly"`
	Description *string `json:"description"`
}

// opDoc is what the route table does not say about an operation.
type opDoc struct {
	description string
	response    string     // an OVH type: a model, a primitive, "T[]" or "void"
	query       []paramDoc // query parameters
	body        []paramDoc // body parameters (name "" for the whole body)
	byoi        bool       // a byoi addition to OVH's API
	status      *apiStatus // default: production
}

type paramDoc struct {
	name, typ, description string
	required               bool
}

// pathParams are the types of the path parameters.
var pathParams = map[string]paramDoc{
	"serviceName":  {typ: "string", description: "The internal name of your dedicated server"},
	"bootId":       {typ: "long", description: "boot id"},
	"taskId":       {typ: "long", description: "the id of the task"},
	"uuid":         {typ: "uuid", description: "Virtual Network Interface UUID"},
	"option":       {typ: "dedicated.server.BootOptionEnum", description: "The option of this boot"},
	"credentialId": {typ: "long", description: "The credential's id"},
}

// routeDocs documents every customer operation by "METHOD path" (the path
// as registered, under the prefix).
var routeDocs = map[string]opDoc{
	"GET /auth/time":                      {description: "Get the current time of the API server, since UNIX epoch", response: "long"},
	"GET /auth/details":                   {description: "Details about the current authentication", response: "auth.Details"},
	"GET /dedicated/server":               {description: "List available services", response: "string[]"},
	"GET /dedicated/server/{serviceName}": {description: "Get this object properties", response: "dedicated.server.DedicatedWithIAM"},
	"PUT /dedicated/server/{serviceName}": {description: "Alter this object properties", response: "void",
		body: []paramDoc{{typ: "dedicated.server.Dedicated", description: "New object properties", required: true}}},
	"GET /dedicated/server/{serviceName}/boot": {description: "Server compatibles netboots", response: "long[]",
		query: []paramDoc{{name: "bootType", typ: "dedicated.server.BootTypeEnum", description: "Filter the value of bootType property (=)"}}},
	"GET /dedicated/server/{serviceName}/boot/{bootId}":                 {description: "Get this object properties", response: "dedicated.server.Netboot"},
	"GET /dedicated/server/{serviceName}/boot/{bootId}/option":          {description: "Option used on this netboot", response: "dedicated.server.BootOptionEnum[]"},
	"GET /dedicated/server/{serviceName}/boot/{bootId}/option/{option}": {description: "Get this object properties", response: "dedicated.server.netbootOption"},
	"POST /dedicated/server/{serviceName}/bringYourOwnImage": {description: "Start an install with your own image", response: "void",
		status: &apiStatus{Value: "DEPRECATED", Description: "Deprecated, will be removed"},
		body: []paramDoc{
			{name: "URL", typ: "string", description: "Image URL", required: true},
			{name: "checkSum", typ: "string", description: "Image checksum"},
			{name: "checkSumType", typ: "dedicated.CheckSumTypesEnum", description: "Checksum type"},
			{name: "configdrive", typ: "dedicated.server.ConfigDrive", description: "Configdrive parameters"},
			{name: "description", typ: "string", description: "Image description"},
			{name: "diskGroupId", typ: "long", description: "Disk group id to process install on (only available for some templates)"},
			{name: "httpHeader", typ: "complexType.SafeKeyValue<string>[]", description: "HTTP Header"},
			{name: "type", typ: "dedicated.ImageTypesEnum", description: "Image type (qcow2, raw; byoi also ova)", required: true},
		}},
	"GET /dedicated/server/{serviceName}/bringYourOwnImage":          {description: "Get this object properties", response: "dedicated.server.ByoiStatus"},
	"DELETE /dedicated/server/{serviceName}/bringYourOwnImage":       {description: "Delete your current image installation, boot the server to rescue", response: "void"},
	"GET /dedicated/server/{serviceName}/bringYourOwnImage/history":  {description: "The server's deployments, newest first", response: "byoi.Deployment[]", byoi: true},
	"GET /dedicated/server/{serviceName}/bringYourOwnImage/hardware": {description: "What the rescue agent's inventory says beyond specifications/hardware: disks and NICs with their drivers, controllers no driver claimed", response: "byoi.Hardware", byoi: true},
	"GET /dedicated/server/{serviceName}/bringYourOwnImage/logs": {description: "The redacted kernel and agent log tails a failed deployment's agent posted", response: "byoi.Logs", byoi: true,
		query: []paramDoc{
			{name: "deploymentId", typ: "long", description: "The deployment (default: the current one)"},
		}},
	"GET /dedicated/server/{serviceName}/bringYourOwnImage/events": {description: "A deployment's status history", response: "byoi.Events", byoi: true,
		query: []paramDoc{
			{name: "deployment", typ: "long", description: "The deployment (default: the current one)"},
			{name: "after", typ: "long", description: "Entries after this position (the previous page's next)"},
			{name: "limit", typ: "long", description: "At most this many entries (1 to 1000, default 500)"},
		}},
	"POST /dedicated/server/{serviceName}/reinstall": {description: "Reinstall your server: byoi_64 or byolinux_64, your own image", response: "dedicated.server.Task",
		body: []paramDoc{
			{name: "operatingSystem", typ: "string", description: "Operating System name to install: byoi_64 or byolinux_64", required: true},
			{name: "customizations", typ: "dedicated.server.reinstall.Customizations", description: "OS reinstallation customizations"},
			{name: "properties", typ: "map[string]string", description: "Arbitrary properties to pass to cloud-init's config drive datasource (the ConfigDrive's metadata)"},
			{name: "storage", typ: "dedicated.server.reinstall.Storage[]", description: "OS reinstallation storage configurations (one disk group)"},
		}},
	"GET /dedicated/server/{serviceName}/task": {description: "Dedicated server todos", response: "long[]",
		query: []paramDoc{
			{name: "function", typ: "dedicated.TaskFunctionEnum", description: "Filter the value of function property (like)"},
			{name: "status", typ: "dedicated.TaskStatusEnum", description: "Filter the value of status property (=)"},
		}},
	"GET /dedicated/server/{serviceName}/task/{taskId}":           {description: "Get this object properties", response: "dedicated.server.Task"},
	"GET /dedicated/server/{serviceName}/install/status":          {description: "Get installation status", response: "dedicated.server.InstallationProgressStatus"},
	"GET /dedicated/server/{serviceName}/specifications/hardware": {description: "Retrieve hardware informations about this dedicated server", response: "dedicated.server.HardwareSpecifications"},
	"GET /dedicated/server/{serviceName}/specifications/network":  {description: "Retrieve network informations about this dedicated server", response: "dedicated.server.NetworkSpecifications"},
	"GET /dedicated/server/{serviceName}/ips":                     {description: "List all ip from server", response: "ipBlock[]"},
	"GET /dedicated/server/{serviceName}/virtualNetworkInterface": {description: "List server VirtualNetworkInterfaces", response: "uuid[]",
		query: []paramDoc{
			{name: "enabled", typ: "boolean", description: "Filter the value of enabled property (=)"},
			{name: "mode", typ: "dedicated.virtualNetworkInterface.VirtualNetworkInterfaceModeEnum", description: "Filter the value of mode property (=)"},
			{name: "name", typ: "string", description: "Filter the value of name property (=)"},
			{name: "vrack", typ: "string", description: "Filter the value of vrack property (=)"},
		}},
	"GET /dedicated/server/{serviceName}/virtualNetworkInterface/{uuid}": {description: "Get this object properties", response: "dedicated.virtualNetworkInterface.VirtualNetworkInterface"},
	"GET /dedicated/server/{serviceName}/serviceInfos":                   {description: "Get service information", response: "services.Service"},
	"POST /dedicated/server/{serviceName}/authenticationSecret":          {description: "Retrieve secret to connect to the server / application", response: "dedicated.server.Access[]"},
	"POST /dedicated/server/{serviceName}/reboot":                        {description: "Hard reboot this server", response: "dedicated.server.Task"},
	// issue 22: a customer's own credentials.
	"GET /me/api/credential": {description: "List of your Api Credentials", response: "long[]",
		query: []paramDoc{
			{name: "status", typ: "auth.CredentialStateEnum", description: "Filter the value of status property (like)"},
		}},
	"GET /me/api/credential/{credentialId}":    {description: "Get this object properties", response: "api.Credential"},
	"DELETE /me/api/credential/{credentialId}": {description: "Remove this Credential (revoked at once on every instance)", response: "void"},
}

var production = apiStatus{Value: "PRODUCTION", Description: "Stable production version"}

var pathParam = regexp.MustCompile(`\{([A-Za-z]+)\}`)

// schemaOps are the customer operations of the route table under prefix,
// by API path, each with its doc (ok false when routeDocs lacks it).
func (s *Server) schemaOps(prefix string) map[string]map[string]endpoint {
	out := map[string]map[string]endpoint{}
	for _, rt := range s.table {
		p, ok := strings.CutPrefix(rt.pattern, prefix+"/")
		if !ok {
			continue
		}
		out["/"+p] = rt.methods
	}
	return out
}

func (s *Server) schemaDoc(r *http.Request, prefix, resource string) schemaDocument {
	d := schemaDocument{APIVersion: "1.0", SwaggerVersion: "1.2", BasePath: s.basePath(r, prefix), ResourcePath: resource, APIs: []schemaAPI{}, Models: map[string]schemaModel{}}
	ops := s.schemaOps(prefix)
	paths := make([]string, 0, len(ops))
	for p := range ops {
		if p == resource || strings.HasPrefix(p, resource+"/") {
			paths = append(paths, p)
		}
	}
	sort.Strings(paths)
	used := map[string]bool{}
	for _, p := range paths {
		api := schemaAPI{Path: p, Operations: []schemaOp{}}
		methods := make([]string, 0, len(ops[p]))
		for m := range ops[p] {
			methods = append(methods, m)
		}
		sort.Strings(methods)
		for _, m := range methods {
			doc, ok := routeDocs[m+" "+p]
			if !ok {
				continue // the coverage test fails on it
			}
			op := schemaOp{HTTPMethod: m, APIStatus: production, NoAuthentication: ops[p][m].auth == authNone, Description: doc.description,
				Parameters: []schemaParam{}, ResponseType: doc.response, ResponseFullType: doc.response}
			if doc.status != nil {
				op.APIStatus = *doc.status
			}
			if doc.byoi {
				op.Description += " (byoi addition)"
			}
			for _, m := range pathParam.FindAllStringSubmatch(p, -1) {
				pd := pathParams[m[1]]
				op.Parameters = append(op.Parameters, param(m[1], pd.typ, "path", true, pd.description))
			}
			for _, q := range doc.query {
				op.Parameters = append(op.Parameters, param(q.name, q.typ, "query", q.required, q.description))
			}
			for _, b := range doc.body {
				op.Parameters = append(op.Parameters, param(b.name, b.typ, "body", b.required, b.description))
			}
			for _, pr := range op.Parameters {
				used[pr.DataType] = true
			}
			used[doc.response] = true
			if api.Description == "" {
				api.Description = doc.description
			}
			api.Operations = append(api.Operations, op)
		}
		if len(api.Operations) > 0 {
			d.APIs = append(d.APIs, api)
		}
	}
	for t := range used {
		addModel(d.Models, t)
	}
	return d
}

func param(name, typ, in string, required bool, description string) schemaParam {
	p := schemaParam{DataType: typ, FullType: typ, ParamType: in, Required: required, Description: description}
	if name != "" {
		p.Name = &name
	}
	return p
}

// primitives are OVH's types that are no model.
var primitives = map[string]bool{"string": true, "long": true, "boolean": true, "double": true, "datetime": true, "date": true,
	"ipBlock": true, "ipv4": true, "ipv4Block": true, "ipv6": true, "ipv6Block": true, "uuid": true, "text": true, "void": true}

// baseType strips "[]" and the map and complexType wrappers.
func baseType(t string) string {
	t = strings.TrimSuffix(t, "[]")
	if v, ok := strings.CutPrefix(t, "map[string]"); ok {
		return baseType(v)
	}
	if i := strings.Index(t, "<"); i > 0 && strings.HasSuffix(t, ">") {
		return t[:i]
	}
	return t
}

// addModel adds model t and every model its properties use.
func addModel(models map[string]schemaModel, t string) {
	t = baseType(t)
	if primitives[t] {
		return
	}
	if _, done := models[t]; done {
		return
	}
	m, ok := modelOf(t)
	if !ok {
		return // the coverage test fails on it
	}
	models[t] = m
	for _, p := range m.Properties {
		addModel(models, p.Type)
	}
}

// modelDef is a model generated from a Go type, with the OVH types of the
// fields Go cannot tell (enums, dates, nested models behind any).
type modelDef struct {
	description string
	goType      reflect.Type
	types       map[string]string
	writable    bool // a body model: properties are not read-only
}

func typeOf[T any]() reflect.Type { return reflect.TypeOf((*T)(nil)).Elem() }

var goModels = map[string]modelDef{
	"dedicated.server.DedicatedWithIAM": {description: "Server informations", goType: typeOf[serverView](), types: map[string]string{
		"datacenter": "dedicated.DatacenterEnum", "ip": "ipv4", "powerState": "dedicated.server.PowerStateEnum",
		"state": "dedicated.server.StateEnum", "supportLevel": "dedicated.server.SupportLevelEnum", "iam": "iam.ResourceMetadata"}},
	"dedicated.server.Dedicated": {description: "Server informations (the properties PUT changes)", goType: typeOf[putServerBody](), writable: true, types: map[string]string{
		"state": "dedicated.server.StateEnum"}},
	"auth.Details":                                {description: "Details about the current authentication", goType: typeOf[authDetailsView](), types: map[string]string{"allowedRoutes": "auth.AccessRule[]", "method": "auth.MethodEnum"}},
	"api.Credential":                              {description: "API credential", goType: typeOf[credentialView](), types: map[string]string{"rules": "api.Rule[]", "status": "auth.CredentialStateEnum", "creation": "datetime", "expiration": "datetime", "lastUse": "datetime", "allowedIPs": "ipBlock[]"}},
	"api.Rule":                                    {description: "API access rule", goType: typeOf[ruleView](), types: map[string]string{"method": "http.Method"}},
	"auth.AccessRule":                             {description: "Access rule required for the application", goType: typeOf[accessRule](), types: map[string]string{"method": "http.Method"}},
	"iam.ResourceMetadata":                        {description: "IAM resource metadata embedded in services models", goType: typeOf[iamView]()},
	"dedicated.server.Netboot":                    {description: "Available boots", goType: typeOf[bootView](), types: map[string]string{"bootType": "dedicated.server.BootTypeEnum"}},
	"dedicated.server.Task":                       {description: "Server tasks", goType: typeOf[taskView](), types: map[string]string{"function": "dedicated.TaskFunctionEnum", "status": "dedicated.TaskStatusEnum", "startDate": "datetime", "doneDate": "datetime", "lastUpdate": "datetime", "tags": "complexType.SafeKeyValueCanBeNull<string>[]"}},
	"dedicated.server.ByoiStatus":                 {description: "A structure describing the current BYOI deployment status", goType: typeOf[byoiStatus](), types: map[string]string{"status": "dedicated.server.ByoiStatusEnum"}},
	"dedicated.server.InstallationProgressStatus": {description: "A structure describing the current progress status of the installation", goType: typeOf[installStatus](), types: map[string]string{"progress": "dedicated.server.InstallationProgressSteps[]"}},
	"dedicated.server.InstallationProgressSteps":  {description: "One step of the installation", goType: typeOf[progressStep](), types: map[string]string{"status": "dedicated.server.InstallationProgressStatusEnum"}},
	"dedicated.server.HardwareSpecifications": {description: "Hardware specifications about this dedicated server (from the rescue agent's inventory)", goType: typeOf[hardwareView](), types: map[string]string{"bootMode": "dedicated.server.BootModeEnum", "diskGroups": "dedicated.server.DiskGroup[]",
		"defaultHardwareRaidSize": "complexType.UnitAndValue<long>", "memorySize": "complexType.UnitAndValue<long>", "expansionCards": "dedicated.server.ExpansionCard[]",
		"usbKeys": "complexType.UnitAndValue<long>[]", "formFactor": "string", "processorArchitecture": "string", "defaultHardwareRaidType": "string"}},
	"dedicated.server.DiskGroup": {description: "A disk group", goType: typeOf[agentapi.DiskGroup](), types: map[string]string{"diskSize": "complexType.UnitAndValue<double>", "diskType": "dedicated.server.DiskTypeEnum"}},
	"complexType.UnitAndValue":   {description: "A numeric value tagged with its unit", goType: typeOf[unitAndValue]()},
	"dedicated.server.NetworkSpecifications": {description: "A structure describing network informations about this dedicated server", goType: typeOf[networkSpecs](), types: map[string]string{
		"bandwidth": "dedicated.server.BandwidthDetails", "connection": "complexType.UnitAndValue<long>", "ola": "dedicated.server.OlaDetails",
		"routing": "dedicated.server.RoutingDetails", "switching": "dedicated.server.SwitchingDetails", "traffic": "dedicated.server.TrafficDetails",
		"vmac": "dedicated.server.VmacDetails", "vrack": "dedicated.server.BandwidthvRackDetails"}},
	"dedicated.server.RoutingDetails":     {description: "Routing details", goType: typeOf[routingDetails](), types: map[string]string{"ipv4": "dedicated.server.RoutingDetailsIpv4", "ipv6": "dedicated.server.RoutingDetailsIpv6"}},
	"dedicated.server.RoutingDetailsIpv4": {description: "Routing details IPv4", goType: typeOf[routingIPv4](), types: map[string]string{"gateway": "ipv4", "ip": "ipv4", "network": "ipv4Block"}},
	"dedicated.server.RoutingDetailsIpv6": {description: "Routing details IPv6 (byoi: always null)", goType: typeOf[routingIPv4](), types: map[string]string{"gateway": "ipv6", "ip": "ipv6Block", "network": "ipv6Block"}},
	"dedicated.server.VmacDetails":        {description: "A structure describing VMAC Infos for this dedicated server", goType: typeOf[vmacDetails]()},
	"services.Service":                    {description: "Details about a Service", goType: typeOf[serviceInfo](), types: map[string]string{"creation": "date", "expiration": "date", "engagedUpTo": "date", "renew": "service.RenewType", "renewalType": "service.RenewalTypeEnum", "status": "service.StateEnum"}},
	"service.RenewType":                   {description: "Map a possible renew for a specific service", goType: typeOf[renewType]()},
	"byoi.Deployment":                     {description: "A deployment of the server (byoi addition)", goType: typeOf[historyItem](), types: map[string]string{"createdAt": "datetime", "endedAt": "datetime", "bootedAt": "datetime"}},
	"byoi.Events":                         {description: "A deployment's status history (byoi addition)", goType: typeOf[eventsView](), types: map[string]string{"events": "byoi.Event[]"}},
	"byoi.Logs":                           {description: "A failed deployment's log tails, redacted (byoi addition)", goType: typeOf[logsView](), types: map[string]string{"receivedAt": "datetime"}},
	"byoi.Hardware":                       {description: "The rescue agent's hardware detail (byoi addition)", goType: typeOf[hardwareDetail](), types: map[string]string{"disks": "byoi.Disk[]", "nics": "byoi.NIC[]", "unclaimedDevices": "byoi.UnclaimedDevice[]"}},
	"byoi.Disk":                           {description: "A disk of the inventory (byoi addition)", goType: typeOf[agentapi.InventoryDisk]()},
	"byoi.NIC":                            {description: "A network interface of the inventory (byoi addition)", goType: typeOf[agentapi.InventoryNIC]()},
	"byoi.UnclaimedDevice":                {description: "A controller no driver of the rescue claimed (byoi addition)", goType: typeOf[agentapi.UnclaimedDevice]()},
	"byoi.Event":                          {description: "One entry of a deployment's status history (byoi addition)", goType: typeOf[eventView](), types: map[string]string{"time": "datetime", "receivedAt": "datetime"}},
}

// fixedModels are OVH's models byoi answers without a Go type of its
// own (request bodies parsed by package job, objects byoi never has).
var fixedModels = map[string]map[string]string{
	"dedicated.server.netbootOption":                            {"option": "dedicated.server.BootOptionEnum", "value": "string"},
	"dedicated.server.Access":                                   {"password": "string", "type": "dedicated.server.AccessTypeEnum", "url": "string", "user": "string"},
	"dedicated.virtualNetworkInterface.VirtualNetworkInterface": {"enabled": "boolean", "mode": "dedicated.virtualNetworkInterface.VirtualNetworkInterfaceModeEnum", "name": "string", "networkInterfaceController": "string[]", "serverName": "string", "uuid": "uuid", "vrack": "string"},
	"dedicated.server.ConfigDrive":                              {"enable": "boolean", "hostname": "string", "sshKey": "string", "userData": "text", "userMetadatas": "complexType.SafeKeyValue<string>[]"},
	"complexType.SafeKeyValue":                                  {"key": "string", "value": "string"},
	"complexType.SafeKeyValueCanBeNull":                         {"key": "string", "value": "string"},
	"dedicated.server.reinstall.Customizations": {"configDriveMetadata": "map[string]string", "configDriveUserData": "text", "efiBootloaderPath": "string", "hostname": "string",
		"httpHeaders": "map[string]string", "imageCheckSum": "string", "imageCheckSumType": "dedicated.CheckSumTypesEnum", "imageType": "dedicated.ImageTypesEnum",
		"imageURL": "string", "language": "string", "postInstallationScript": "text", "postInstallationScriptExtension": "string", "sshKey": "string"},
	"dedicated.server.reinstall.Storage":                     {"diskGroupId": "long", "hardwareRaid": "dedicated.server.reinstall.storage.HardwareRaid[]", "partitioning": "dedicated.server.reinstall.storage.Partitioning"},
	"dedicated.server.reinstall.storage.HardwareRaid":        {"arrays": "long", "disks": "long", "raidLevel": "long", "spares": "long"},
	"dedicated.server.reinstall.storage.Partitioning":        {"disks": "long", "layout": "dedicated.server.reinstall.storage.partitioning.Layout[]", "schemeName": "string"},
	"dedicated.server.reinstall.storage.partitioning.Layout": {"fileSystem": "string", "mountPoint": "string", "raidLevel": "long", "size": "long"},
	"dedicated.server.BandwidthDetails":                      {"InternetToOvh": "complexType.UnitAndValue<long>", "OvhToInternet": "complexType.UnitAndValue<long>", "OvhToOvh": "complexType.UnitAndValue<long>", "type": "string"},
	"dedicated.server.OlaDetails":                            {"available": "boolean", "supportedModes": "dedicated.virtualNetworkInterface.VirtualNetworkInterfaceModeEnum[]"},
	"dedicated.server.SwitchingDetails":                      {"name": "string"},
	"dedicated.server.ExpansionCard":                         {"description": "string", "type": "string"},
	"dedicated.server.TrafficDetails":                        {"inputQuotaSize": "complexType.UnitAndValue<long>", "inputQuotaUsed": "complexType.UnitAndValue<long>", "isThrottled": "boolean", "outputQuotaSize": "complexType.UnitAndValue<long>", "outputQuotaUsed": "complexType.UnitAndValue<long>", "resetQuotaDate": "datetime"},
	"dedicated.server.BandwidthvRackDetails":                 {"bandwidth": "complexType.UnitAndValue<long>", "type": "string"},
}

// enumModels are the enums, their values OVH's (byoi's own where it
// extends them: ova, sha512).
var enumModels = map[string][]string{
	"dedicated.DatacenterEnum":                                          {"bhs1", "bhs2", "bhs3", "bhs4", "bhs5", "bhs6", "bhs7", "bhs8", "cch01", "crx1", "crx2", "dc1", "eri1", "eri2", "gra04", "gra1", "gra2", "gra3", "gsw", "hdf01", "hil1", "ieb01", "lil1-int1", "lim1", "lim2", "lim3", "mr901", "p19", "rbx", "rbx-hz", "rbx1", "rbx10", "rbx2", "rbx3", "rbx4", "rbx5", "rbx6", "rbx7", "rbx8", "rbx9", "sbg1", "sbg2", "sbg3", "sbg4", "sbg5", "sgp02", "sgp1", "syd03", "syd1", "syd2", "vin1", "waw1", "ynm1", "yyz01"},
	"dedicated.server.PowerStateEnum":                                   {"poweroff", "poweron"},
	"auth.MethodEnum":                                                   {"account", "provider", "user"},
	"auth.CredentialStateEnum":                                          {"expired", "pendingValidation", "refused", "validated"},
	"http.Method":                                                       {"DELETE", "GET", "PATCH", "POST", "PUT"},
	"dedicated.server.StateEnum":                                        {"error", "hacked", "hackedBlocked", "ok"},
	"dedicated.server.SupportLevelEnum":                                 {"critical", "fastpath", "gs", "pro"},
	"dedicated.server.BootTypeEnum":                                     {"harddisk", "internal", "ipxeCustomerScript", "network", "power", "rescue"},
	"dedicated.server.BootOptionEnum":                                   {"cpufamily", "grsec", "ipv6", "smp"},
	"dedicated.TaskStatusEnum":                                          {"cancelled", "customerError", "doing", "done", "init", "ovhError", "todo"},
	"dedicated.server.ByoiStatusEnum":                                   {"doing", "done", "error"},
	"dedicated.CheckSumTypesEnum":                                       {"md5", "sha1", "sha256", "sha512"},
	"dedicated.ImageTypesEnum":                                          {"ova", "qcow2", "raw"},
	"dedicated.server.InstallationProgressStatusEnum":                   {"doing", "done", "error", "expired", "idle", "pending", "stopping", "todo"},
	"dedicated.server.BootModeEnum":                                     {"legacy", "uefi", "uefi-legacy"},
	"dedicated.server.DiskTypeEnum":                                     {"NVME", "SAS", "SATA", "SSD", "UNKNOWN"},
	"service.RenewalTypeEnum":                                           {"automaticForcedProduct", "automaticV2012", "automaticV2014", "automaticV2016", "automaticV2024", "manual", "oneShot", "option"},
	"service.StateEnum":                                                 {"autorenewInProgress", "expired", "inCreation", "ok", "pendingDebt", "unPaid"},
	"dedicated.server.AccessTypeEnum":                                   {"DIRECTADMIN_PANEL", "PLESK_PANEL", "PROXMOX_PANEL", "RDP", "SQL_SERVER", "SSH", "WEB_PANEL"},
	"dedicated.virtualNetworkInterface.VirtualNetworkInterfaceModeEnum": {"public", "vrack", "vrack_aggregation"},
}

func splitName(t string) (namespace, id string) {
	i := strings.LastIndex(t, ".")
	if i < 0 {
		return "", t
	}
	return t[:i], t[i+1:]
}

// modelOf builds model t, or reports that none is known.
func modelOf(t string) (schemaModel, bool) {
	ns, id := splitName(t)
	m := schemaModel{ID: id, Namespace: ns}
	if t == "dedicated.TaskFunctionEnum" {
		vals := make([]string, 0, len(taskFunctions))
		for v := range taskFunctions {
			vals = append(vals, v)
		}
		sort.Strings(vals)
		m.Description, m.Enum, m.EnumType = "different task operation", vals, "string"
		return m, true
	}
	if vals, ok := enumModels[t]; ok {
		m.Description, m.Enum, m.EnumType = t, vals, "string"
		return m, true
	}
	if props, ok := fixedModels[t]; ok {
		m.Description, m.Properties = t, map[string]schemaProperty{}
		for name, typ := range props {
			m.Properties[name] = schemaProperty{Type: typ, FullType: typ, CanBeNull: true}
		}
		return m, true
	}
	def, ok := goModels[t]
	if !ok {
		return m, false
	}
	m.Description, m.Properties = def.description, map[string]schemaProperty{}
	rt := def.goType
	for i := 0; i < rt.NumField(); i++ {
		f := rt.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name == "" || name == "-" || !f.IsExported() {
			continue
		}
		typ, ok := def.types[name]
		if !ok {
			typ = ovhType(f.Type)
		}
		canNull := f.Type.Kind() == reflect.Pointer || f.Type.Kind() == reflect.Slice || f.Type.Kind() == reflect.Map || f.Type.Kind() == reflect.Interface
		m.Properties[name] = schemaProperty{Type: typ, FullType: typ, CanBeNull: canNull || def.writable, ReadOnly: !def.writable}
	}
	return m, true
}

// ovhType is the OVH type of a Go field without an override.
func ovhType(t reflect.Type) string {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch t.Kind() {
	case reflect.String:
		return "string"
	case reflect.Bool:
		return "boolean"
	case reflect.Int, reflect.Int32, reflect.Int64:
		return "long"
	case reflect.Float32, reflect.Float64:
		return "double"
	case reflect.Slice:
		return ovhType(t.Elem()) + "[]"
	case reflect.Map:
		return "map[string]" + ovhType(t.Elem())
	}
	for name, def := range goModels {
		if def.goType == t {
			return name
		}
	}
	return fmt.Sprintf("unknown(%s)", t)
}
