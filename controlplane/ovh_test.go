package controlplane_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/byoi/byoi/agentapi"
	"github.com/byoi/byoi/controlplane"
	"github.com/byoi/byoi/job"
	"github.com/ovh/go-ovh/ovh"
)

// What OVH's own tools read and send beyond the BYOI routes (issue 24).

var testInventory = agentapi.Inventory{BootMode: agentapi.BootModeUEFI, AgentVersion: "test", DiskGroups: []agentapi.DiskGroup{
	{DiskGroupID: 1, Description: "1 X Disk NVME 960 GB, JBOD", DiskSize: agentapi.DiskSize{Unit: "GB", Value: 960}, DiskType: "NVME", NumberOfDisks: 1}}}

// ovhTask is OVH's dedicated.server.Task as a client reads it.
type ovhTask struct {
	TaskID     int64
	Function   string
	Status     string
	Comment    string
	StartDate  *string
	DoneDate   *string
	LastUpdate *string
}

// ovhCatalogCoverage triggers the control-plane codes of issue 24 for
// TestAPICatalogCoverage.
func ovhCatalogCoverage(t *testing.T, e *env, cv *coverage, cu *customer) {
	c := cu.bearer
	ag := e.server("ns-ovh", cu.name)
	// An agent that told it cannot detect the image type.
	ag.inventory(testInventory)
	body := map[string]any{"operatingSystem": "byoi_64", "customizations": map[string]any{"imageURL": "https://images.example.com/d.qcow2"}}
	cv.apiError("reinstall without imageType for an agent that cannot detect", c.Post(path("ns-ovh", "/reinstall"), body, nil), 400, "Client::BadRequest", job.APINoFeature, "test")
	var task ovhTask
	if err := c.Post(path("ns-ovh", "/reboot"), nil, &task); err != nil {
		t.Fatal(err)
	}
	if task.Function != "hardReboot" || task.Status != "todo" {
		t.Errorf("reboot task %+v", task)
	}
	cv.text("POST reboot's task, no power driver", task.Comment, job.MsgRebootByHand)
	e.clock.Advance(time.Second)
	ag.inventory(testInventory) // the rescue agent started: the server rebooted
	if err := c.Get(path("ns-ovh", fmt.Sprintf("/task/%d", task.TaskID)), &task); err != nil {
		t.Fatal(err)
	}
	if task.Status != "done" || task.DoneDate == nil {
		t.Errorf("reboot task after the agent's inventory: %+v", task)
	}
	cv.text("the reboot task once the rescue agent reported", task.Comment, job.MsgRebootSeen)
}

func TestServerOVHFields(t *testing.T) {
	facts, err := controlplane.ParseFacts([]byte(`{"defaults":{"datacenter":"gra3","region":"eu-west-gra","availabilityZone":"eu-west-gra-a","linkSpeed":1000},
		"servers":{"ns1":{"ip":"192.0.2.10","reverse":"ns1.example.net","rack":"G102A07","gateway":"192.0.2.254","network":"192.0.2.0/24","ips":["198.51.100.0/29"],"supportLevel":"pro"}}}`))
	if err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, cfg(func(c *controlplane.Config) { c.Facts = facts }))
	cu := e.customer("acme")
	e.server("ns1", "acme")
	e.server("ns2", "acme")
	c := cu.signed
	get := func(name string) map[string]any {
		t.Helper()
		var m map[string]any
		if err := c.Get(path(name, ""), &m); err != nil {
			t.Fatal(err)
		}
		return m
	}
	// Every field of OVH's DedicatedWithIAM, and no other.
	want := []string{"availabilityZone", "bootId", "bootScript", "commercialRange", "datacenter", "efiBootloaderPath", "iam", "ip", "linkSpeed", "monitoring",
		"name", "newUpgradeSystem", "noIntervention", "os", "powerState", "professionalUse", "rack", "region", "rescueMail", "rescueSshKey", "reverse",
		"rootDevice", "serverId", "state", "supportLevel"}
	m := get("ns1")
	var keys []string
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	if !slices.Equal(keys, want) {
		t.Fatalf("fields %v\nwant %v", keys, want)
	}
	for k, v := range map[string]any{"datacenter": "gra3", "ip": "192.0.2.10", "reverse": "ns1.example.net", "rack": "G102A07", "region": "eu-west-gra",
		"availabilityZone": "eu-west-gra-a", "linkSpeed": json.Number("1000"), "supportLevel": "pro", "state": "ok", "monitoring": false, "name": "ns1",
		"os": "none_64", "powerState": nil, "bootScript": nil, "rescueMail": nil, "commercialRange": nil, "bootId": json.Number("2")} {
		if got := m[k]; got != v {
			t.Errorf("ns1 %s = %#v, want %#v", k, got, v)
		}
	}
	iam, _ := m["iam"].(map[string]any)
	if iam["urn"] != "urn:v1:byoi:resource:dedicatedServer:ns1" || iam["displayName"] != "ns1" || len(iam["id"].(string)) != 36 {
		t.Errorf("iam %v", iam)
	}
	// ns2 has the defaults only; what nobody gave is null.
	m2 := get("ns2")
	if m2["datacenter"] != "gra3" || m2["ip"] != nil || m2["rack"] != nil || m2["supportLevel"] != nil {
		t.Errorf("ns2 %v", m2)
	}
	if m2["iam"].(map[string]any)["id"] == iam["id"] {
		t.Error("two servers share an iam id")
	}

	// PUT: what Terraform's ovh_dedicated_server_update and OVH's CLI send.
	if err := c.Put(path("ns1", ""), map[string]any{"bootId": 1, "monitoring": true, "state": "ok"}, nil); err != nil {
		t.Fatal(err)
	}
	if err := c.Put(path("ns1", ""), map[string]any{"bootScript": "#!ipxe\nexit\n", "rescueMail": "ops@example.com", "rootDevice": "/dev/nvme0n1",
		"noIntervention": true, "rescueSshKey": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIO82/7e9WQiwfzkfAePAXbwRasmsmauPfV02uYKlHDB9 me", "efiBootloaderPath": nil, "state": "hacked"}, nil); err != nil {
		t.Fatal(err)
	}
	m = get("ns1")
	for k, v := range map[string]any{"bootId": json.Number("1"), "monitoring": true, "state": "hacked", "bootScript": "#!ipxe\nexit\n", "rescueMail": "ops@example.com",
		"rootDevice": "/dev/nvme0n1", "noIntervention": true, "efiBootloaderPath": nil} {
		if got := m[k]; got != v {
			t.Errorf("after PUT %s = %#v, want %#v", k, got, v)
		}
	}
	// "" clears (Terraform's ToUpdate sends it), null changes nothing.
	if err := c.Put(path("ns1", ""), map[string]any{"bootScript": "", "rescueMail": nil, "monitoring": false, "state": "ok"}, nil); err != nil {
		t.Fatal(err)
	}
	m = get("ns1")
	if m["bootScript"] != nil || m["rescueMail"] != "ops@example.com" || m["monitoring"] != false || m["state"] != "ok" || m["noIntervention"] != true {
		t.Errorf("after clearing: %v", m)
	}
	// The CLI's edit sends back every writable field as it read them.
	var back map[string]any
	if err := c.Get(path("ns2", ""), &back); err != nil {
		t.Fatal(err)
	}
	writable := map[string]any{}
	for _, k := range []string{"bootId", "bootScript", "efiBootloaderPath", "monitoring", "noIntervention", "rescueMail", "rescueSshKey", "rootDevice", "state"} {
		writable[k] = back[k]
	}
	if err := c.Put(path("ns2", ""), writable, nil); err != nil {
		t.Fatalf("PUT of what GET read: %v", err)
	}
	for _, tt := range []struct {
		body   map[string]any
		status int
		msg    string
	}{
		{map[string]any{"state": "broken"}, 400, job.Text(job.APIBadParam, "state", "one of error, hacked, hackedBlocked, ok")},
		{map[string]any{"rescueMail": "not a mail"}, 400, job.Text(job.APIBadParam, "rescueMail", "an e-mail address")},
		{map[string]any{"rootDevice": "/dev/sda\n"}, 400, job.Text(job.APIBadParam, "rootDevice", "a device path of at most 255 bytes, without control characters")},
		{map[string]any{"rescueSshKey": "ssh-rsa nope"}, 400, job.Text(job.APIBadParam, "rescueSshKey", "one OpenSSH public key line")},
		{map[string]any{"bootScript": "a\x00b"}, 400, job.Text(job.APIBadParam, "bootScript", "an iPXE script of at most 4 KiB, without NUL")},
		{map[string]any{"name": "ns9"}, 400, `unknown field "name"`},
		{map[string]any{"monitoring": "yes"}, 400, `field "monitoring" has the wrong type`},
	} {
		wantAPIErr(t, c.Put(path("ns1", ""), tt.body, nil), tt.status, "Client::BadRequest", tt.msg)
	}
	// A refused PUT changed nothing, not even the valid fields before it.
	wantAPIErr(t, c.Put(path("ns1", ""), map[string]any{"bootId": 2, "state": "broken"}, nil), 400, "Client::BadRequest", "")
	if m := get("ns1"); m["bootId"] != json.Number("1") {
		t.Errorf("a refused PUT changed bootId: %v", m["bootId"])
	}
	// The properties survive a restart (they are the database's).
	e.restart()
	c2, _ := ovh.NewClient(e.url+"/1.0", cu.cred.ApplicationKey, cu.cred.ApplicationSecret, cu.cred.ConsumerKey)
	var after map[string]any
	if err := c2.Get(path("ns1", ""), &after); err != nil || after["noIntervention"] != true || after["rescueMail"] != "ops@example.com" {
		t.Errorf("after restart: %v %v", after, err)
	}
}

func TestFactsFile(t *testing.T) {
	for _, bad := range []string{
		`{"defaults":{"ip":"2001:db8::1"}}`,
		`{"defaults":{"ip":"300.1.1.1"}}`,
		`{"defaults":{"network":"192.0.2.1"}}`,
		`{"defaults":{"supportLevel":"gold"}}`,
		`{"defaults":{"linkSpeed":-1}}`,
		`{"defaults":{"datacentre":"gra"}}`,
		`{"servers":{"bad name":{}}}`,
		`{"servers":{"ns1":{"ips":["10.0.0.1"]}}}`,
		`{"defaults":{"rack":"a\nb"}}`,
		`[]`,
	} {
		if _, err := controlplane.ParseFacts([]byte(bad)); err == nil {
			t.Errorf("accepted %s", bad)
		}
	}
	ff, err := controlplane.ParseFacts([]byte(`{"defaults":{"datacenter":"rbx8","ips":["203.0.113.0/30"]},"servers":{"ns1":{"datacenter":"gra3","ip":"192.0.2.10","ips":[]}}}`))
	if err != nil {
		t.Fatal(err)
	}
	if f := ff.For("ns1"); f.Datacenter != "gra3" || f.IP != "192.0.2.10" || len(f.IPs) != 0 {
		t.Errorf("ns1 %+v", f)
	}
	if f := ff.For("other"); f.Datacenter != "rbx8" || f.IP != "" || len(f.IPs) != 1 {
		t.Errorf("other %+v", f)
	}
	if f := (*controlplane.FactsFile)(nil).For("x"); f.Datacenter != "" || f.IPs != nil {
		t.Errorf("no file: %+v", f)
	}
}

func TestOVHToolRoutes(t *testing.T) {
	facts, _ := controlplane.ParseFacts([]byte(`{"servers":{"ns1":{"ip":"192.0.2.10","gateway":"192.0.2.254","network":"192.0.2.0/24","ips":["198.51.100.0/29"],"linkSpeed":10000}}}`))
	e := newEnv(t, cfg(func(c *controlplane.Config) { c.Facts = facts }))
	cu := e.customer("acme")
	e.customer("globex")
	a := e.server("ns1", "acme")
	e.server("ns2", "acme")
	e.server("ns9", "globex")
	c := cu.signed
	getJSON := func(p string) string {
		t.Helper()
		var raw json.RawMessage
		if err := c.Get(p, &raw); err != nil {
			t.Fatalf("GET %s: %v", p, err)
		}
		return string(raw)
	}
	for p, want := range map[string]string{
		path("ns1", "/ips"):                     `["192.0.2.10/32","198.51.100.0/29"]`,
		path("ns2", "/ips"):                     `[]`,
		path("ns1", "/virtualNetworkInterface"): `[]`,
		path("ns1", "/virtualNetworkInterface?mode=vrack&enabled=true&name=x&vrack=pn-1"): `[]`,
		path("ns1", "/boot/1/option"):          `[]`,
		path("ns1", "/boot/2/option"):          `[]`,
		path("ns1", "/authenticationSecret"):   "",
		path("ns1", "/specifications/network"): `{"bandwidth":null,"connection":{"unit":"Mbps","value":10000},"ola":null,"routing":{"ipv4":{"gateway":"192.0.2.254","ip":"192.0.2.10","network":"192.0.2.0/24"},"ipv6":null},"switching":null,"traffic":null,"vmac":{"quota":0,"supported":false},"vrack":null}`,
		path("ns2", "/specifications/network"): `{"bandwidth":null,"connection":null,"ola":null,"routing":{"ipv4":null,"ipv6":null},"switching":null,"traffic":null,"vmac":{"quota":0,"supported":false},"vrack":null}`,
	} {
		if want == "" {
			continue
		}
		if got := getJSON(p); got != want {
			t.Errorf("GET %s = %s\nwant %s", p, got, want)
		}
	}
	var secrets []any
	if err := c.Post(path("ns1", "/authenticationSecret"), nil, &secrets); err != nil || secrets == nil || len(secrets) != 0 {
		t.Errorf("authenticationSecret %v %v", secrets, err)
	}
	var si map[string]any
	if err := c.Get(path("ns1", "/serviceInfos"), &si); err != nil {
		t.Fatal(err)
	}
	if si["domain"] != "ns1" || si["status"] != "ok" || si["contactAdmin"] != "acme" || si["expiration"] != nil || si["renew"].(map[string]any)["automatic"] != false ||
		si["creation"] != e.clock.Now().UTC().Format(time.DateOnly) {
		t.Errorf("serviceInfos %v", si)
	}
	for _, tt := range []struct {
		p, msg string
		status int
		class  string
	}{
		{path("ns1", "/virtualNetworkInterface?mode=ola"), job.Text(job.APIBadParam, "mode", "public, vrack or vrack_aggregation"), 400, "Client::BadRequest"},
		{path("ns1", "/virtualNetworkInterface?enabled=maybe"), job.Text(job.APIBadParam, "enabled", "true or false"), 400, "Client::BadRequest"},
		{path("ns1", "/virtualNetworkInterface/0b3d6e0e-9c1b-4e3a-8e52-5b1b0e7e2f11"), job.Text(job.APINotFound, "uuid = 0b3d6e0e-9c1b-4e3a-8e52-5b1b0e7e2f11"), 404, "Client::NotFound"},
		{path("ns1", "/boot/3/option"), job.Text(job.APINotFound, "bootId = 3"), 404, "Client::NotFound"},
		{path("ns1", "/boot/1/option/smp"), job.Text(job.APINotFound, "option = smp"), 404, "Client::NotFound"},
		{path("ns1", "/task?status=running"), job.Text(job.APIBadParam, "status", "one of cancelled, customerError, doing, done, init, ovhError, todo"), 400, "Client::BadRequest"},
		{path("ns1", "/task?function=reboot"), job.Text(job.APIBadParam, "function", "a dedicated.TaskFunctionEnum value (reinstallServer, hardReboot, ...)"), 400, "Client::BadRequest"},
		{path("ns9", "/ips"), job.Text(job.APINotFound, "serviceName = ns9"), 404, "Client::NotFound"},
		{path("ns9", "/serviceInfos"), job.Text(job.APINotFound, "serviceName = ns9"), 404, "Client::NotFound"},
	} {
		wantAPIErr(t, c.Get(tt.p, nil), tt.status, tt.class, tt.msg)
	}
	wantAPIErr(t, c.Post(path("ns1", "/reboot"), map[string]any{"force": true}, nil), 400, "Client::BadRequest", "this request takes no body")
	wantAPIErr(t, c.Post(path("ns9", "/reboot"), nil, nil), 404, "Client::NotFound", job.Text(job.APINotFound, "serviceName = ns9"))

	// Tasks: a reinstall, then the reboots of Terraform's bootid_on_destroy.
	var rt ovhTask
	body := map[string]any{"operatingSystem": "byoi_64", "customizations": map[string]any{"imageURL": "https://images.example.com/d.qcow2"}, "storage": []any{map[string]any{"diskGroupId": 1, "partitioning": map[string]any{}}}}
	if err := c.Post(path("ns1", "/reinstall"), body, &rt); err != nil {
		t.Fatalf("reinstall without imageType, no inventory yet: %v", err)
	}
	var r1, r2 ovhTask
	if err := c.Put(path("ns1", ""), map[string]any{"bootId": 1}, nil); err != nil {
		t.Fatal(err)
	}
	if err := c.Post(path("ns1", "/reboot"), nil, &r1); err != nil {
		t.Fatal(err)
	}
	if r1.Function != "hardReboot" || r1.Status != "todo" || r1.Comment != job.Text(job.MsgRebootByHand) || r1.StartDate == nil || r1.DoneDate != nil {
		t.Errorf("reboot task %+v", r1)
	}
	// A second reboot request while the first is open: OVH's conflict
	// (409, TaskAlreadyExists), naming the open task; no new task.
	wantAPIErr(t, c.Post(path("ns1", "/reboot"), map[string]any{}, &r2), 409, "Client::BadRequest::TaskAlreadyExists",
		job.Text(job.APITaskRunning, r1.TaskID, "hardReboot", "todo", "ns1"))
	ids := func(q string) []int64 {
		t.Helper()
		var out []int64
		if err := c.Get(path("ns1", "/task"+q), &out); err != nil {
			t.Fatal(err)
		}
		return out
	}
	for q, want := range map[string][]int64{
		"":                                 {rt.TaskID, r1.TaskID},
		"?function=hardReboot":             {r1.TaskID},
		"?function=reinstallServer":        {rt.TaskID},
		"?status=todo":                     {r1.TaskID},
		"?status=init":                     {rt.TaskID},
		"?function=addVirtualMac":          {},
		"?function=hardReboot&status=done": {},
	} {
		if got := ids(q); !slices.Equal(got, want) {
			t.Errorf("task%s = %v, want %v", q, got, want)
		}
	}
	if got := getJSON(path("ns2", "/task")); got != `[]` {
		t.Errorf("ns2's tasks %s", got)
	}
	// PUT bootId alone did not reboot anything, and the server has not
	// been seen booting: the tasks wait. The agent starting in rescue is
	// a boot: it ends, once.
	e.clock.Advance(2 * time.Second)
	a.inventory(testInventory)
	if got := ids("?status=done"); !slices.Equal(got, []int64{r1.TaskID}) {
		t.Errorf("done tasks %v", got)
	}
	var done ovhTask
	if err := c.Get(path("ns1", fmt.Sprintf("/task/%d", r1.TaskID)), &done); err != nil || done.Status != "done" || done.DoneDate == nil || done.LastUpdate == nil || done.Comment != job.Text(job.MsgRebootSeen) {
		t.Errorf("after the reboot was seen: %+v %v", done, err)
	}
	if got := ids("?status=init"); !slices.Equal(got, []int64{rt.TaskID}) {
		t.Errorf("the reinstall task moved: %v", got)
	}
	// An agent that announces detection takes a job without imageType.
	var rt2 ovhTask
	b := e.server("ns3", "acme")
	inv := testInventory
	inv.Features = []string{agentapi.FeatureDetectImageType}
	b.inventory(inv)
	if err := c.Post(path("ns3", "/reinstall"), body, &rt2); err != nil {
		t.Fatalf("reinstall without imageType for a detecting agent: %v", err)
	}
	as := b.pickUp()
	j, err := job.Parse(as.Job)
	if err != nil || j.ImageType != job.ImageTypeDetect {
		t.Errorf("the agent's job: %+v %v", j, err)
	}
}

// TestSignatureWithoutPort: OVH's Node.js client signs the URL without the
// listener's port; go-ovh and python-ovh with it. Both are accepted, and
// nothing else is.
func TestSignatureWithoutPort(t *testing.T) {
	e := newEnv(t)
	cu := e.customer("acme")
	e.server("ns1", "acme")
	hostport := strings.TrimPrefix(e.url, "http://")
	host, _, _ := strings.Cut(hostport, ":")
	send := func(signedURL, method, p, body string) int {
		t.Helper()
		ts := e.clock.Now().Unix()
		req, _ := http.NewRequest(method, e.url+"/1.0"+p, strings.NewReader(body))
		req.Header.Set("X-Ovh-Application", cu.cred.ApplicationKey)
		req.Header.Set("X-Ovh-Consumer", cu.cred.ConsumerKey)
		req.Header.Set("X-Ovh-Timestamp", fmt.Sprint(ts))
		req.Header.Set("X-Ovh-Signature", controlplane.Sign(cu.cred.ApplicationSecret, cu.cred.ConsumerKey, method, signedURL, []byte(body), ts))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	p := "/dedicated/server/ns1/boot?bootType=rescue"
	for _, tt := range []struct {
		url  string
		want int
	}{
		{"http://" + hostport + "/1.0" + p, 200},   // go-ovh, python-ovh
		{"http://" + host + "/1.0" + p, 200},       // the Node.js client (it says https over TLS)
		{"http://" + host + ":1/1.0" + p, 400},     // another port
		{"http://other.example/1.0" + p, 400},      // another host
		{"http://" + host + "/1.0" + p + "x", 400}, // another query
		{"https://" + host + "/1.0" + p, 400},      // another scheme
	} {
		if got := send(tt.url, "GET", p, ""); got != tt.want {
			t.Errorf("signed over %s: %d, want %d", tt.url, got, tt.want)
		}
	}
	if got := send("http://"+host+"/1.0/dedicated/server/ns1", "PUT", "/dedicated/server/ns1", `{"bootId":1}`); got != 200 {
		t.Errorf("a signed PUT without the port: %d", got)
	}
}

func TestSignedURLs(t *testing.T) {
	for _, tt := range []struct {
		public, host, uri string
		tls               bool
		want              []string
	}{
		{"", "127.0.0.1:8443", "/1.0/auth/time", true, []string{"https://127.0.0.1:8443/1.0/auth/time", "https://127.0.0.1/1.0/auth/time"}},
		{"", "api.example.com", "/1.0/x?a=b", true, []string{"https://api.example.com/1.0/x?a=b"}},
		{"", "[::1]:8080", "/1.0/x", false, []string{"http://[::1]:8080/1.0/x", "http://[::1]/1.0/x"}},
		{"", "[::1]", "/1.0/x", false, []string{"http://[::1]/1.0/x"}},
		{"https://api.example.com:8443/byoi", "10.0.0.1:80", "/1.0/x", false, []string{"https://api.example.com:8443/byoi/1.0/x", "https://api.example.com/byoi/1.0/x"}},
		{"https://api.example.com/byoi", "10.0.0.1:80", "/1.0/x", false, []string{"https://api.example.com/byoi/1.0/x"}},
		{"", "h:1", "http://h:1/1.0/x", false, []string{"http://h:1/1.0/x", "http://h/1.0/x"}},
		{"", "u@h:1", "/x", false, []string{"http://u@h:1/x"}},
	} {
		if got := controlplane.SignedURLs(tt.public, tt.tls, tt.host, tt.uri); !slices.Equal(got, tt.want) {
			t.Errorf("SignedURLs(%q, %v, %q, %q) = %q, want %q", tt.public, tt.tls, tt.host, tt.uri, got, tt.want)
		}
	}
}

// TestSchemaDocuments: OVH's schema documents list every customer
// operation of the route table, each documented, and every type they name
// is a primitive or one of their models.
func TestSchemaDocuments(t *testing.T) {
	e := newEnv(t)
	get := func(p string, v any) {
		t.Helper()
		resp, err := http.Get(e.url + p)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("GET %s: %d", p, resp.StatusCode)
		}
		if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
			t.Fatal(err)
		}
	}
	var index struct {
		APIs []struct {
			Path, Schema string
		}
		BasePath string
	}
	get("/1.0/", &index)
	if index.BasePath != e.url+"/1.0" || len(index.APIs) != 3 || index.APIs[0].Path != "/auth" || index.APIs[1].Schema != "/dedicated/server.{format}" || index.APIs[2].Path != "/me" {
		t.Fatalf("index %+v", index)
	}
	type doc struct {
		APIVersion, ResourcePath, BasePath string
		APIs                               []struct {
			Path       string
			Operations []struct {
				HTTPMethod       string
				APIStatus        struct{ Value string }
				NoAuthentication bool
				Description      string
				ResponseType     string
				Parameters       []struct {
					Name      *string
					DataType  string
					ParamType string
					Required  bool
				}
			}
		}
		Models map[string]struct {
			Properties map[string]struct{ Type string }
			Enum       []string
		}
	}
	ops := map[string]bool{}
	for _, prefix := range []string{"/1.0", "/v1"} {
		for _, res := range []string{"/auth", "/dedicated/server", "/me"} {
			var d doc
			get(prefix+res+".json", &d)
			if d.APIVersion != "1.0" || d.ResourcePath != res || d.BasePath != e.url+prefix {
				t.Errorf("%s%s: %s %s %s", prefix, res, d.APIVersion, d.ResourcePath, d.BasePath)
			}
			for _, api := range d.APIs {
				for _, op := range api.Operations {
					if prefix == "/1.0" {
						ops[op.HTTPMethod+" "+api.Path] = true
					}
					if op.APIStatus.Value == "" || op.Description == "" || op.ResponseType == "" {
						t.Errorf("%s %s: %+v", op.HTTPMethod, api.Path, op)
					}
					if (api.Path == "/auth/time") != op.NoAuthentication {
						t.Errorf("%s %s: noAuthentication %v", op.HTTPMethod, api.Path, op.NoAuthentication)
					}
					types := []string{op.ResponseType}
					for _, p := range op.Parameters {
						types = append(types, p.DataType)
						if p.ParamType == "path" && (p.Name == nil || !strings.Contains(api.Path, "{"+*p.Name+"}") || !p.Required) {
							t.Errorf("%s %s: path parameter %+v", op.HTTPMethod, api.Path, p)
						}
					}
					for len(types) > 0 {
						typ := controlplane.SchemaBaseType(types[0])
						types = types[1:]
						if controlplane.SchemaPrimitive(typ) {
							continue
						}
						m, ok := d.Models[typ]
						if !ok {
							t.Errorf("%s%s: %s %s names type %s, which is no model", prefix, res, op.HTTPMethod, api.Path, typ)
							continue
						}
						if len(m.Properties) == 0 && len(m.Enum) == 0 {
							t.Errorf("model %s is empty", typ)
						}
						for name, p := range m.Properties {
							if strings.HasPrefix(p.Type, "unknown(") {
								t.Errorf("model %s property %s: %s", typ, name, p.Type)
							}
							types = append(types, p.Type)
						}
					}
				}
			}
		}
	}
	// Every customer route is in the documents, and every documented
	// operation is a route.
	routes := controlplane.CustomerOperations(e.srv)
	for _, op := range routes {
		if !ops[op] {
			t.Errorf("route %s is missing from the schema documents", op)
		}
	}
	for op := range ops {
		if !slices.Contains(routes, op) {
			t.Errorf("schema operation %s is no route", op)
		}
	}
	if len(ops) < 25 {
		t.Errorf("only %d operations", len(ops))
	}
}
