package controlplane_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/byoi/byoi/agentapi"
	"github.com/byoi/byoi/internal/testutil"
	"github.com/byoi/byoi/job"
	"github.com/ovh/go-ovh/ovh"
)

const sha = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"

// Secret values of the jobs below: never in a log.
const (
	headerSecret   = "Bearer HEADER-SECRET-v4lue"
	userDataSecret = "#cloud-config\n# USERDATA-SECRET-v4lue\n"
)

func legacyBody() map[string]any {
	return map[string]any{
		"URL": "https://images.example.com/debian.qcow2?X-Sig=QUERY-SECRET", "type": "qcow2",
		"checkSum": sha, "checkSumType": "sha256",
		"httpHeader":  []map[string]string{{"key": "Authorization", "value": headerSecret}},
		"configdrive": map[string]any{"enable": true, "hostname": "web1", "userData": userDataSecret},
	}
}

func reinstallBody() map[string]any {
	return map[string]any{
		"operatingSystem": "byoi_64",
		"customizations": map[string]any{
			"imageURL": "https://images.example.com/debian.raw", "imageType": "raw",
			"imageCheckSum": sha, "imageCheckSumType": "sha256",
			"efiBootloaderPath":   `\efi\debian\grubx64.efi`,
			"httpHeaders":         map[string]string{"Authorization": headerSecret},
			"configDriveUserData": userDataSecret,
		},
		"storage": []map[string]any{{"diskGroupId": 1}},
	}
}

type byoiStatus struct {
	Checksum, Message, Servername *string
	Status                        string
}

type task struct {
	TaskID                          json.Number
	Function, Status, Comment       string
	StartDate, DoneDate, LastUpdate *string
}

type installStatus struct {
	ElapsedTime json.Number
	Progress    []struct{ Comment, Status, Error string }
}

func stepStatuses(t *testing.T, c *ovh.Client, server string) string {
	t.Helper()
	var st installStatus
	if err := c.Get(path(server, "/install/status"), &st); err != nil {
		t.Fatal(err)
	}
	if len(st.Progress) != len(job.Steps) {
		t.Fatalf("%d steps", len(st.Progress))
	}
	var s []string
	for i, p := range st.Progress {
		if p.Comment != job.StepComment(job.Steps[i]) {
			t.Errorf("step %d comment %q", i, p.Comment)
		}
		s = append(s, p.Status)
	}
	return strings.Join(s, " ")
}

func getStatus(t *testing.T, c *ovh.Client, server string) byoiStatus {
	t.Helper()
	var st byoiStatus
	if err := c.Get(path(server, "/bringYourOwnImage"), &st); err != nil {
		t.Fatal(err)
	}
	return st
}

func serverInfo(t *testing.T, c *ovh.Client, server string) map[string]any {
	t.Helper()
	var v map[string]any
	if err := c.Get(path(server, ""), &v); err != nil {
		t.Fatal(err)
	}
	return v
}

var inv = agentapi.Inventory{BootMode: "uefi", AgentVersion: "test", MACs: []string{"52:54:00:12:34:56"}, DiskGroups: []agentapi.DiskGroup{
	{DiskGroupID: 1, Description: "2 X Disk NVME 1920 GB, JBOD", DiskSize: agentapi.DiskSize{Unit: "GB", Value: 1920}, DiskType: "NVME", NumberOfDisks: 2},
	{DiskGroupID: 2, Description: "1 X Disk SATA 4000 GB, JBOD", DiskSize: agentapi.DiskSize{Unit: "GB", Value: 4000}, DiskType: "SATA", NumberOfDisks: 1},
}}

// TestLegacyDeploymentDone: go-ovh with a signature credential posts a
// legacy job; a simulated agent drives it to done; the customer follows
// status, install/status step by step and the hardware, then DELETEs.
func TestLegacyDeploymentDone(t *testing.T) {
	e := newEnv(t)
	cu := e.customer("acme")
	a := e.server("ns1.example", "acme")
	e.secret(headerSecret, "HEADER-SECRET-v4lue", "USERDATA-SECRET-v4lue", "QUERY-SECRET")
	c := cu.signed

	var names []string
	if err := c.Get("/dedicated/server", &names); err != nil || len(names) != 1 || names[0] != "ns1.example" {
		t.Fatalf("servers %v %v", names, err)
	}
	var hw map[string]any
	if err := c.Get(path(a.server, "/specifications/hardware"), &hw); err != nil || hw["bootMode"] != nil {
		t.Fatalf("hardware before inventory: %v %v", hw, err)
	}
	a.inventory(inv)
	var hw2 struct {
		BootMode   string
		DiskGroups []agentapi.DiskGroup
	}
	if err := c.Get(path(a.server, "/specifications/hardware"), &hw2); err != nil || hw2.BootMode != "uefi" || len(hw2.DiskGroups) != 2 || hw2.DiskGroups[0].Description != "2 X Disk NVME 1920 GB, JBOD" {
		t.Fatalf("hardware: %+v %v", hw2, err)
	}

	// A disk group the server does not have is refused up front.
	bad := legacyBody()
	bad["diskGroupId"] = 3
	wantAPIErr(t, c.Post(path(a.server, "/bringYourOwnImage"), bad, nil), 400, "Client::BadRequest", job.Text(job.DiskGroupMissing, 3, "1 (2 X Disk NVME 1920 GB, JBOD), 2 (1 X Disk SATA 4000 GB, JBOD)"))

	var res any
	if err := c.Post(path(a.server, "/bringYourOwnImage"), legacyBody(), &res); err != nil {
		t.Fatal(err)
	}
	st := getStatus(t, c, a.server)
	if st.Status != "doing" || *st.Message != job.Text(job.MsgStarting) || *st.Checksum != sha || *st.Servername != "ns1.example" {
		t.Fatalf("%+v", st)
	}
	if got := stepStatuses(t, c, a.server); got != "todo todo todo todo todo todo todo todo" {
		t.Fatal(got)
	}
	if b := serverInfo(t, c, a.server)["bootId"]; fmt.Sprint(b) != "2" {
		t.Fatalf("boot after POST %v, want rescue (2)", b)
	}

	as := a.pickUp()
	var posted map[string]any
	json.Unmarshal(as.Job, &posted)
	if posted["URL"] != legacyBody()["URL"] || as.Attempts != 0 {
		t.Fatalf("assignment %s", as.Job)
	}
	if j, err := job.Parse(as.Job); err != nil || j.Headers[0].Value != headerSecret || string(j.ConfigDrive.UserData) != userDataSecret {
		t.Fatalf("job does not parse back: %v", err)
	}
	a.mustSend(a.event("doing", job.StepPreflight, job.KindInfo, job.MsgPreflight, job.Text(job.MsgPreflight), 0, 0))
	if got := stepStatuses(t, c, a.server); got != "doing todo todo todo todo todo todo todo" {
		t.Fatal(got)
	}
	a.mustSend(a.event("doing", job.StepDownload, job.KindProgress, "", "", 1<<30, 4<<30))
	if st := getStatus(t, c, a.server); *st.Message != job.Text(job.MsgDownloading, "1.0 GiB", "4.0 GiB") {
		t.Fatalf("%q", *st.Message)
	}
	if got := stepStatuses(t, c, a.server); got != "done doing todo todo todo todo todo todo" {
		t.Fatal(got)
	}
	a.mustSend(a.event("doing", job.StepVerify, job.KindInfo, "", "", 0, 0), a.event("doing", job.StepWrite, job.KindProgress, "", "", 1<<30, 4<<30))
	if st := getStatus(t, c, a.server); *st.Message != job.Text(job.MsgWriting, 25) {
		t.Fatalf("%q", *st.Message)
	}
	if got := stepStatuses(t, c, a.server); got != "done done done doing todo todo todo todo" {
		t.Fatal(got)
	}
	ack := a.mustSend(a.event("doing", job.StepConfigDrive, job.KindInfo, "", "", 0, 0), a.event("done", job.StepFinish, job.KindInfo, job.MsgDone, job.Text(job.MsgDone), 0, 0))
	if !ack.Done || ack.Seq != 6 {
		t.Fatalf("ack %+v", ack)
	}
	st = getStatus(t, c, a.server)
	if st.Status != "done" || *st.Message != job.Text(job.MsgDone) {
		t.Fatalf("%+v", st)
	}
	if got := stepStatuses(t, c, a.server); got != "done done done done done done done done" {
		t.Fatal(got)
	}
	info := serverInfo(t, c, a.server)
	if fmt.Sprint(info["bootId"]) != "1" || info["state"] != "ok" || info["name"] != "ns1.example" {
		t.Fatalf("after done: %v", info)
	}
	var ids []json.Number
	if err := c.Get(path(a.server, "/boot?bootType=rescue"), &ids); err != nil || len(ids) != 1 || ids[0] != "2" {
		t.Fatalf("rescue boots %v %v", ids, err)
	}
	// the job is no longer served
	if st, _ := a.do("GET", agentapi.JobPath(a.server), nil, nil); st != 204 {
		t.Fatalf("job after done: %d", st)
	}
	var hist []map[string]any
	if err := c.Get(path(a.server, "/bringYourOwnImage/history"), &hist); err != nil || len(hist) != 1 || hist[0]["status"] != "done" {
		t.Fatalf("history %v %v", hist, err)
	}
	var evs struct {
		Events []struct {
			Seq        json.Number
			Source     string
			Step       string
			BytesTotal json.Number
		}
		Next json.Number
	}
	if err := c.Get(path(a.server, "/bringYourOwnImage/events?after=0"), &evs); err != nil || len(evs.Events) != 7 || evs.Events[0].Source != "controlplane" || evs.Events[2].BytesTotal != "4294967296" {
		t.Fatalf("events %+v %v", evs, err)
	}
	if err := c.Get(path(a.server, "/bringYourOwnImage/events?after="+evs.Next.String()), &evs); err != nil || len(evs.Events) != 0 {
		t.Fatalf("events after the last: %+v %v", evs, err)
	}

	// DELETE: status erased, boot back to rescue.
	if err := c.Delete(path(a.server, "/bringYourOwnImage"), nil); err != nil {
		t.Fatal(err)
	}
	wantAPIErr(t, c.Get(path(a.server, "/bringYourOwnImage"), nil), 404, "Client::NotFound", job.Text(job.APINoDeployment, "ns1.example"))
	if b := serverInfo(t, c, a.server)["bootId"]; fmt.Sprint(b) != "2" {
		t.Fatalf("boot after DELETE %v", b)
	}
	// PUT bootId: harddisk again.
	if err := c.Put(path(a.server, ""), map[string]any{"bootId": 1}, nil); err != nil {
		t.Fatal(err)
	}
	if b := serverInfo(t, c, a.server)["bootId"]; fmt.Sprint(b) != "1" {
		t.Fatalf("boot after PUT %v", b)
	}
	wantAPIErr(t, c.Put(path(a.server, ""), map[string]any{"bootId": 77}, nil), 404, "Client::NotFound", "")
	wantAPIErr(t, c.Put(path(a.server, ""), map[string]any{"bootid": 1}, nil), 400, "Client::BadRequest", "")
}

// TestReinstallErrors: go-ovh with an access token; reinstall returns a
// task; a checksum mismatch ends it customerError, a write failure
// ovhError; the status carries the agent's exact message; boot stays rescue.
func TestReinstallErrors(t *testing.T) {
	e := newEnv(t)
	cu := e.customer("acme")
	c := cu.bearer
	for i, tt := range []struct {
		code job.Code
		args []any
		task string
	}{
		{job.ChecksumMismatch, []any{"sha256", "00ff", sha}, "customerError"},
		{job.WriteFailed, []any{"raw"}, "ovhError"},
	} {
		a := e.server(fmt.Sprintf("ns%d", i), "acme")
		var tk task
		if err := c.Post(path(a.server, "/reinstall"), reinstallBody(), &tk); err != nil {
			t.Fatal(err)
		}
		if tk.Function != "reinstallServer" || tk.Status != "init" || tk.Comment != job.Text(job.MsgTaskReinstall) || tk.StartDate == nil || tk.DoneDate != nil || tk.LastUpdate != nil {
			t.Fatalf("%+v", tk)
		}
		if _, err := time.Parse(time.RFC3339, *tk.StartDate); err != nil {
			t.Fatal(err)
		}
		if info := serverInfo(t, c, a.server); info["efiBootloaderPath"] != `\efi\debian\grubx64.efi` {
			t.Fatalf("efiBootloaderPath %v", info["efiBootloaderPath"])
		}
		if as := a.pickUp(); as.EFIBootloaderPath != `\efi\debian\grubx64.efi` {
			t.Fatalf("the assignment does not carry the server's efiBootloaderPath: %q", as.EFIBootloaderPath)
		}
		var got task
		if err := c.Get(path(a.server, "/task/"+tk.TaskID.String()), &got); err != nil || got.Status != "doing" || got.LastUpdate == nil {
			t.Fatalf("task after pickup %+v %v", got, err)
		}
		a.mustSend(a.event("doing", job.StepDownload, job.KindProgress, "", "", 10, 100), a.event("doing", job.StepVerify, job.KindInfo, "", "", 0, 0))
		msg := job.Text(tt.code, tt.args...)
		ack := a.mustSend(a.event("error", job.StepVerify, job.KindInfo, tt.code, msg, 0, 0))
		if !ack.Done {
			t.Fatal(ack)
		}
		if err := c.Get(path(a.server, "/task/"+tk.TaskID.String()), &got); err != nil || got.Status != tt.task || got.DoneDate == nil {
			t.Fatalf("task %+v %v", got, err)
		}
		st := getStatus(t, c, a.server)
		if st.Status != "error" || *st.Message != msg {
			t.Fatalf("%+v", st)
		}
		var is installStatus
		c.Get(path(a.server, "/install/status"), &is)
		if is.Progress[1].Status != "done" || is.Progress[2].Status != "error" || is.Progress[2].Error != msg || is.Progress[3].Status != "todo" {
			t.Fatalf("%+v", is)
		}
		if b := serverInfo(t, c, a.server)["bootId"]; fmt.Sprint(b) != "2" {
			t.Fatalf("boot after error %v", b)
		}
		// the final event again (a lost answer): acknowledged once more
		a.seq--
		if st, ack, _ := a.send(a.event("error", job.StepVerify, job.KindInfo, tt.code, msg, 0, 0)); st != 200 || !ack.Done {
			t.Fatalf("repeat of the final event: %d %+v", st, ack)
		}
		// a new deployment may start after an error
		if err := c.Post(path(a.server, "/reinstall"), reinstallBody(), nil); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Get(path("ns0", "/task/999999"), nil); err == nil || apiErr(t, err).Code != 404 {
		t.Fatalf("unknown task: %v", err)
	}
}

// TestRefusals: a second POST (409 TaskAlreadyExists with OVH's words), a
// bad body (400, the job package's exact message), another customer's
// server (404, like a server that does not exist), over both shapes.
func TestRefusals(t *testing.T) {
	e := newEnv(t)
	cu := e.customer("acme")
	other := e.customer("globex")
	e.server("ns1", "acme")
	e.server("ns2", "globex")
	c := cu.signed

	var tk task
	if err := c.Post(path("ns1", "/reinstall"), reinstallBody(), &tk); err != nil {
		t.Fatal(err)
	}
	running := job.Text(job.APITaskRunning, mustInt(t, tk.TaskID), "reinstallServer", "init", "ns1")
	// (the bearer client: the same signed request again within the same
	// second would be a replay)
	wantAPIErr(t, cu.bearer.Post(path("ns1", "/reinstall"), reinstallBody(), nil), 409, "Client::BadRequest::TaskAlreadyExists", running)
	wantAPIErr(t, c.Post(path("ns1", "/bringYourOwnImage"), legacyBody(), nil), 409, "Client::BadRequest::TaskAlreadyExists", running)

	for _, tt := range []struct {
		p    string
		body any
	}{
		{"/bringYourOwnImage", map[string]any{"URL": "https://x/i", "type": "vmdk"}},
		{"/bringYourOwnImage", map[string]any{"URL": "https://x/i", "type": "raw", "checksum": "ab"}},
		{"/bringYourOwnImage", map[string]any{"URL": "https://x/i", "type": "raw", "checkSum": sha}},
		{"/bringYourOwnImage", reinstallBody()},
		{"/reinstall", legacyBody()},
		{"/reinstall", map[string]any{"operatingSystem": "debian12_64"}},
		{"/bringYourOwnImage", "a string"},
	} {
		b, _ := json.Marshal(tt.body)
		var want string
		var err error
		if tt.p == "/reinstall" {
			_, err = job.ParseReinstall(b)
		} else {
			_, err = job.ParseLegacy(b)
		}
		if err == nil {
			t.Fatalf("%s parses", b)
		}
		want = err.(*job.ValidationError).Message
		wantAPIErr(t, c.Post(path("ns2x", tt.p), tt.body, nil), 404, "Client::NotFound", "")
		wantAPIErr(t, c.Post(path("ns2", tt.p), tt.body, nil), 404, "Client::NotFound", job.Text(job.APINotFound, "serviceName = ns2"))
		e2 := c.Post(path("ns1", tt.p), tt.body, nil)
		if tt.p == "/reinstall" || true {
			// validation comes before the running-task check
			wantAPIErr(t, e2, 400, "Client::BadRequest", want)
		}
	}
	// Another customer's server is invisible in every route.
	for _, p := range []string{"", "/bringYourOwnImage", "/install/status", "/specifications/hardware", "/task/1", "/bringYourOwnImage/history", "/bringYourOwnImage/events", "/boot"} {
		wantAPIErr(t, other.signed.Get(path("ns1", p), nil), 404, "Client::NotFound", job.Text(job.APINotFound, "serviceName = ns1"))
	}
	wantAPIErr(t, other.bearer.Delete(path("ns1", "/bringYourOwnImage"), nil), 404, "Client::NotFound", "")
	var names []string
	other.bearer.Get("/dedicated/server", &names)
	if len(names) != 1 || names[0] != "ns2" {
		t.Fatalf("globex sees %v", names)
	}
	// /v1 works the same (go-ovh drops /1.0 for /v1/ paths).
	var st byoiStatus
	if err := c.Get("/v1"+path("ns1", "/bringYourOwnImage"), &st); err != nil || st.Status != "doing" {
		t.Fatalf("/v1: %+v %v", st, err)
	}
	// unknown route and method
	wantAPIErr(t, c.Get("/dedicated/nothing", nil), 404, "Client::NotFound", "")
	wantAPIErr(t, c.Put(path("ns1", "/bringYourOwnImage"), map[string]any{}, nil), 405, "Client::MethodNotAllowed", "")
}

func mustInt(t *testing.T, n json.Number) int64 {
	v, err := n.Int64()
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// TestConcurrentPosts: 50 concurrent POSTs for one server, exactly one
// accepted (the database's unique index decides).
func TestConcurrentPosts(t *testing.T) {
	e := newEnv(t)
	cu := e.customer("acme")
	e.server("ns1", "acme")
	var wg sync.WaitGroup
	var mu sync.Mutex
	ok, conflict := 0, 0
	for i := 0; i < 50; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			// one go-ovh client per goroutine: a go-ovh Client is not safe
			// for concurrent use (NewRequest writes c.Client.Timeout)
			c, err := ovh.NewAccessTokenClient(e.url+"/1.0", cu.token)
			if i%2 == 0 {
				c, err = ovh.NewClient(e.url+"/1.0", cu.cred.ApplicationKey, cu.cred.ApplicationSecret, cu.cred.ConsumerKey)
			}
			if err != nil {
				t.Error(err)
				return
			}
			// Each body its own hostname: the same signed request twice
			// within a second is a replay, refused before the race.
			if i%3 == 0 {
				b := reinstallBody()
				b["customizations"].(map[string]any)["hostname"] = fmt.Sprintf("web%d", i)
				err = c.Post(path("ns1", "/reinstall"), b, nil)
			} else {
				b := legacyBody()
				b["configdrive"].(map[string]any)["hostname"] = fmt.Sprintf("web%d", i)
				err = c.Post(path("ns1", "/bringYourOwnImage"), b, nil)
			}
			mu.Lock()
			defer mu.Unlock()
			if err == nil {
				ok++
			} else if ae, isAPI := err.(*ovh.APIError); isAPI && ae.Code == 409 && ae.Class == "Client::BadRequest::TaskAlreadyExists" {
				conflict++
			} else {
				t.Error(err)
			}
		}(i)
	}
	wg.Wait()
	if ok != 1 || conflict != 49 {
		t.Fatalf("accepted %d, refused %d", ok, conflict)
	}
	var hist []any
	cu.bearer.Get(path("ns1", "/bringYourOwnImage/history"), &hist)
	if len(hist) != 1 {
		t.Fatalf("%d deployments", len(hist))
	}
}

// TestNoDiskStack: the control plane carries nothing of the disk stack.
func TestNoDiskStack(t *testing.T) {
	goBin := testutil.RequireCommand(t, "go")
	out, err := exec.Command(goBin, "list", "-deps", "github.com/byoi/byoi/controlplane/...", "github.com/byoi/byoi/cmd/byoi-api").Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	for _, p := range strings.Fields(string(out)) {
		for _, bad := range []string{"byoi/agent", "byoi/imaging", "byoi/partition", "byoi/blockdev", "byoi/configdrive", "go-diskfs", "go-qcow2reader"} {
			if strings.Contains(p, bad) && !strings.Contains(p, "byoi/agentapi") {
				t.Errorf("the control plane depends on %s", p)
			}
		}
	}
}

var _ = context.Background
var _ = http.StatusOK
