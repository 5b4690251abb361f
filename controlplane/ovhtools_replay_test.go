package controlplane_test

import (
	"encoding/json"
	"fmt"
	"os"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/byoi/byoi/agentapi"
	"github.com/byoi/byoi/controlplane"
	"github.com/byoi/byoi/job"
	"github.com/ovh/go-ovh/ovh"
)

// Replays of what OVH's own tools send and read (issue 24), from golden
// files derived from their source (testdata/ovhtools: each names the
// commit and how it was derived): terraform-provider-ovh's dedicated-server
// resources and data sources, and OVH's CLI's baremetal commands. Each
// request is sent as the tool sent it, through go-ovh (which both tools
// use), to a real byoi-api; each answer must be a success, decode into the
// Go types the tool decodes it into (built from the golden description),
// carry every field OVH's schema gives that object, and have the objects
// the tool's reads go through.

type goldenRequest struct {
	Method string          `json:"method"`
	Path   string          `json:"path"`
	Body   json.RawMessage `json:"body"`
	Decode any             `json:"decode"`
	Expect map[string]any  `json:"expect"`
	Then   string          `json:"then"`
	Reads  []string        `json:"reads"`
}

type goldenSource struct {
	Repository string `json:"repository"`
	Commit     string `json:"commit"`
}

type terraformGolden struct {
	Source    goldenSource `json:"source"`
	Scenarios []struct {
		Name     string          `json:"name"`
		Resource string          `json:"resource"`
		Action   string          `json:"action"`
		Config   json.RawMessage `json:"config"`
		Requests []goldenRequest `json:"requests"`
	} `json:"scenarios"`
	Types map[string]struct {
		Decodes   any      `json:"decodes"`
		OVHModel  string   `json:"ovhModel"`
		OVHFields []string `json:"ovhFields"`
	} `json:"types"`
}

type cliGolden struct {
	Source   goldenSource `json:"source"`
	Commands []struct {
		Command  string          `json:"command"`
		Requests []goldenRequest `json:"requests"`
	} `json:"commands"`
}

func readGolden(t *testing.T, name string, v any) {
	t.Helper()
	data, err := os.ReadFile("testdata/ovhtools/" + name)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, v); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
}

// toolsEnv is a byoi-api with one server, ns1.example, whose rescue agent
// has reported (it detects image types), and the operator's facts.
type toolsEnv struct {
	e     *env
	c     *ovh.Client
	agent *agent
	inv   agentapi.Inventory
	sent  map[string]time.Time // non-GET requests, when last sent
}

func newToolsEnv(t *testing.T) *toolsEnv {
	facts, err := controlplane.ParseFacts([]byte(`{"defaults":{"datacenter":"gra3","region":"eu-west-gra","availabilityZone":"eu-west-gra-a"},
		"servers":{"ns1.example":{"ip":"192.0.2.10","reverse":"ns1.example.net","linkSpeed":1000,"gateway":"192.0.2.254","network":"192.0.2.0/24"}}}`))
	if err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, cfg(func(c *controlplane.Config) { c.Facts = facts }))
	cu := e.customer("acme")
	te := &toolsEnv{e: e, c: cu.signed, agent: e.server("ns1.example", "acme"), inv: testInventory}
	te.inv.Features = []string{agentapi.FeatureDetectImageType}
	te.agent.inventory(te.inv)
	return te
}

// notSameSecond waits, when the same signed request was sent less than a
// second ago, until a second has passed (go-ovh's timestamp is in
// seconds): byoi-api refuses a signed request it already received (issue
// 22), and a tool sends the same one again only in a later command,
// minutes later, never within a second.
func (te *toolsEnv) notSameSecond(key string) {
	if te.sent == nil {
		te.sent = map[string]time.Time{}
	}
	if last, ok := te.sent[key]; ok {
		time.Sleep(time.Until(last.Add(1050 * time.Millisecond)))
	}
	te.sent[key] = time.Now()
}

// act does what happens while a tool waits for its task.
func (te *toolsEnv) act(t *testing.T, what string) {
	t.Helper()
	te.e.clock.Advance(time.Second)
	switch what {
	case "agent deploys":
		as := te.agent.pickUp()
		if _, err := job.Parse(as.Job); err != nil {
			t.Fatalf("the agent cannot parse its job: %v", err)
		}
		te.agent.mustSend(te.agent.event(job.StatusDone, job.StepFinish, job.KindInfo, job.MsgDone, job.Text(job.MsgDone), 0, 0))
	case "rescue agent reports":
		te.agent.inventory(te.inv)
	default:
		t.Fatalf("unknown action %q", what)
	}
}

// replay sends the requests in order and checks each answer.
func (te *toolsEnv) replay(t *testing.T, reqs []goldenRequest, check func(goldenRequest, json.RawMessage)) {
	t.Helper()
	var task int64
	var queue []int64
	for _, r := range reqs {
		p := strings.ReplaceAll(r.Path, "{serviceName}", "ns1.example")
		if strings.Contains(p, "{task}") {
			id := task
			if len(queue) > 0 {
				id, queue = queue[0], queue[1:]
			}
			p = strings.ReplaceAll(p, "{task}", strconv.FormatInt(id, 10))
		}
		var body any
		if len(r.Body) > 0 && string(r.Body) != "null" {
			body = r.Body
		}
		if r.Method != "GET" {
			te.notSameSecond(r.Method + " " + p + " " + string(r.Body))
		}
		var raw json.RawMessage
		if err := te.c.CallAPI(r.Method, p, body, &raw, true); err != nil {
			t.Fatalf("%s %s (body %s): %v", r.Method, p, r.Body, err)
		}
		var obj map[string]any
		json.Unmarshal(raw, &obj)
		if id, ok := obj["taskId"].(float64); ok && r.Method == "POST" {
			task = int64(id)
		}
		if strings.HasSuffix(r.Path, "/task") {
			json.Unmarshal(raw, &queue)
		}
		for k, v := range r.Expect {
			if obj[k] != v {
				t.Errorf("%s %s: %s = %v, want %v (%s)", r.Method, p, k, obj[k], v, raw)
			}
		}
		for _, path := range r.Reads {
			if err := readPath(raw, path); err != nil {
				t.Errorf("%s %s: the tool reads %s: %v", r.Method, p, path, err)
			}
		}
		if check != nil {
			check(r, raw)
		}
		if r.Then != "" {
			te.act(t, r.Then)
		}
	}
}

// readPath follows a dotted path through the answer: every parent must be
// an object (a Go template's index, OVH's CLI's templates, fails on null)
// and the last key must be there.
func readPath(raw json.RawMessage, path string) error {
	var v any
	if err := json.Unmarshal(raw, &v); err != nil {
		return err
	}
	keys := strings.Split(path, ".")
	for i, k := range keys {
		m, ok := v.(map[string]any)
		if !ok {
			return fmt.Errorf("%s is not an object", strings.Join(keys[:i], "."))
		}
		if v, ok = m[k]; !ok {
			return fmt.Errorf("no %s", strings.Join(keys[:i+1], "."))
		}
	}
	return nil
}

// goType builds the Go type a golden decode description names, as
// encoding/json decodes into it.
func goType(t *testing.T, d any, types map[string]any) reflect.Type {
	switch d := d.(type) {
	case string:
		if inner, ok := strings.CutSuffix(d, "?"); ok {
			return reflect.PointerTo(goType(t, inner, types))
		}
		switch d {
		case "string":
			return reflect.TypeOf("")
		case "int64":
			return reflect.TypeOf(int64(0))
		case "bool":
			return reflect.TypeOf(false)
		case "number":
			return reflect.TypeOf(float64(0))
		case "time":
			return reflect.TypeOf(time.Time{})
		case "any":
			return reflect.TypeOf((*any)(nil)).Elem()
		}
		if name, ok := strings.CutPrefix(d, "@"); ok {
			if desc, ok := types[name]; ok {
				return goType(t, desc, types)
			}
			return reflect.TypeOf((*any)(nil)).Elem() // a framework element type the probe did not expand
		}
	case map[string]any:
		if e, ok := d["array"]; ok {
			return reflect.SliceOf(goType(t, e, types))
		}
		if e, ok := d["map"]; ok {
			return reflect.MapOf(reflect.TypeOf(""), goType(t, e, types))
		}
		if fields, ok := d["object"].(map[string]any); ok {
			names := make([]string, 0, len(fields))
			for k := range fields {
				names = append(names, k)
			}
			sort.Strings(names)
			var sf []reflect.StructField
			for i, k := range names {
				sf = append(sf, reflect.StructField{Name: fmt.Sprintf("F%d", i), Type: goType(t, fields[k], types), Tag: reflect.StructTag(`json:"` + k + `"`)})
			}
			return reflect.PointerTo(reflect.StructOf(sf))
		}
	}
	t.Fatalf("unknown decode description %v", d)
	return nil
}

func TestReplayTerraformProviderOVH(t *testing.T) {
	var g terraformGolden
	readGolden(t, "terraform-provider-ovh.json", &g)
	if len(g.Source.Commit) != 40 || len(g.Scenarios) < 10 {
		t.Fatalf("golden file: %+v, %d scenarios", g.Source, len(g.Scenarios))
	}
	descs := map[string]any{}
	for name, ty := range g.Types {
		descs[name] = ty.Decodes
	}
	for _, sc := range g.Scenarios {
		t.Run(sc.Name, func(t *testing.T) {
			te := newToolsEnv(t)
			te.replay(t, sc.Requests, func(r goldenRequest, raw json.RawMessage) {
				if r.Decode == nil {
					return
				}
				v := reflect.New(goType(t, r.Decode, descs))
				if err := json.Unmarshal(raw, v.Interface()); err != nil {
					t.Errorf("%s %s: the provider's decode fails: %v\n%s", r.Method, r.Path, err, raw)
				}
				name, _ := r.Decode.(string)
				ty, ok := g.Types[strings.TrimPrefix(name, "@")]
				if !ok {
					return
				}
				var obj map[string]json.RawMessage
				json.Unmarshal(raw, &obj)
				for _, f := range ty.OVHFields {
					if f == "lastUpdate" && r.Method == "POST" {
						continue // OVH's own POST answer has none (shared/reference/API.md); GET task/{id} has it
					}
					if _, ok := obj[f]; !ok {
						t.Errorf("%s %s: OVH's %s has %s; the answer has not", r.Method, r.Path, ty.OVHModel, f)
					}
				}
			})
		})
	}
	// What Terraform's reinstall_task sends reaches the job as meant:
	// partitioning {} accepted, the disk group kept.
	for _, sc := range g.Scenarios {
		if sc.Resource == "ovh_dedicated_server_reinstall_task" && sc.Action == "create" {
			j, err := job.ParseReinstall(sc.Requests[0].Body)
			if err != nil {
				t.Errorf("%s: %v", sc.Name, err)
				continue
			}
			if !strings.HasPrefix(j.ImageURL, "https://images.example.com/") || j.DiskGroupID != 1 {
				t.Errorf("%s: %+v", sc.Name, j)
			}
		}
	}
}

func TestReplayOVHCloudCLI(t *testing.T) {
	var g cliGolden
	readGolden(t, "ovhcloud-cli.json", &g)
	if len(g.Source.Commit) != 40 || len(g.Commands) < 10 {
		t.Fatalf("golden file: %+v, %d commands", g.Source, len(g.Commands))
	}
	te := newToolsEnv(t)
	// The commands in the order they ran: each one's state is the
	// previous ones' (edit, boot set, reboots, reinstall, list-tasks).
	for _, cmd := range g.Commands {
		t.Run(cmd.Command, func(t *testing.T) {
			te.replay(t, cmd.Requests, nil)
			// "reboot" does not wait for its task: the server reboots
			// before the user's next command (its rescue agent reports,
			// which ends the task). A reboot request while one is open
			// is OVH's conflict (409).
			if strings.HasPrefix(cmd.Command, "ovhcloud baremetal reboot ") {
				te.act(t, "rescue agent reports")
			}
		})
	}
	var tasks []int64
	if err := te.c.Get("/dedicated/server/ns1.example/task", &tasks); err != nil || len(tasks) != 3 {
		t.Errorf("tasks after the CLI's commands: %v %v", tasks, err)
	}
}
