package controlplane_test

import (
	"context"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/byoi/byoi/agentapi"
	"github.com/byoi/byoi/job"
)

type historyBooted struct {
	DeploymentID int64
	Status       string
	Booted       *string
	BootedAt     *string
}

// phoneHome posts as cloud-init's phone_home does (form, instance_id).
func phoneHome(t *testing.T, u string) int {
	t.Helper()
	resp, err := http.PostForm(u, url.Values{"instance_id": {"iid-1"}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

func (e *env) bootedOf(cu *customer, server string) historyBooted {
	e.t.Helper()
	var h []historyBooted
	if err := cu.bearer.Get(path(server, "/bringYourOwnImage/history"), &h); err != nil || len(h) == 0 {
		e.t.Fatalf("history: %v %v", h, err)
	}
	return h[0]
}

// bootedFlow: a job with a ConfigDrive gets a single-use bootedURL on the
// agent API; the deployed system's POST marks it booted once, only after
// done, with its entry; a job without a ConfigDrive is not watched; a
// silent system is warned of after BootedTimeout; no token in the logs.
// It returns the history entries' codes.
func bootedFlow(t *testing.T, e *env, cu *customer) map[job.Code]string {
	seen := map[job.Code]string{}
	note := func(server string) {
		_, h := e.history(server)
		for _, en := range h {
			seen[en.Code] = en.Message
		}
	}
	a := e.server("b1", cu.name)
	if err := cu.bearer.Post(path("b1", "/bringYourOwnImage"), legacyBody(), nil); err != nil {
		t.Fatal(err)
	}
	as := a.pickUp()
	if !strings.HasPrefix(as.BootedURL, e.url+agentapi.BootedPrefix+"byoi_bt_") {
		t.Fatalf("bootedURL %q", as.BootedURL)
	}
	e.secret(strings.TrimPrefix(as.BootedURL, e.url+agentapi.BootedPrefix))
	if st := phoneHome(t, as.BootedURL); st != 404 {
		t.Errorf("phone home before done: %d", st)
	}
	if h := e.bootedOf(cu, "b1"); h.Booted != nil {
		t.Errorf("booted state before done: %v", *h.Booted)
	}
	a.mustSend(a.event("done", job.StepFinish, job.KindInfo, job.MsgDone, job.Text(job.MsgDone), 0, 0))
	if h := e.bootedOf(cu, "b1"); h.Booted == nil || *h.Booted != "watching" {
		t.Errorf("after done: %+v", h)
	}
	e.clock.Advance(2 * time.Minute)
	if st := phoneHome(t, as.BootedURL); st != 204 {
		t.Fatalf("phone home: %d", st)
	}
	if st := phoneHome(t, as.BootedURL); st != 404 {
		t.Errorf("phone home twice: %d", st)
	}
	if st := phoneHome(t, e.url+agentapi.BootedPath("byoi_bt_0123456789abcdef")); st != 404 {
		t.Errorf("unknown token: %d", st)
	}
	h := e.bootedOf(cu, "b1")
	if h.Booted == nil || *h.Booted != "booted" || h.BootedAt == nil || h.Status != "done" {
		t.Errorf("booted: %+v", h)
	}
	var st byoiStatus
	if err := cu.bearer.Get(path("b1", "/bringYourOwnImage"), &st); err != nil || st.Status != "done" {
		t.Errorf("OVH's status changed: %+v %v", st, err)
	}
	note("b1")
	if m := seen[job.MsgBooted]; m != "booted: the new system phoned home 2m0s after done" {
		t.Errorf("booted entry %q", m)
	}

	// No ConfigDrive: not watched.
	b2 := e.server("b2", cu.name)
	body := legacyBody()
	delete(body, "configdrive")
	if err := cu.bearer.Post(path("b2", "/bringYourOwnImage"), body, nil); err != nil {
		t.Fatal(err)
	}
	if as := b2.pickUp(); as.BootedURL != "" {
		t.Errorf("a job without a ConfigDrive got %q", as.BootedURL)
	}
	b2.mustSend(b2.event("done", job.StepFinish, job.KindInfo, job.MsgDone, job.Text(job.MsgDone), 0, 0))
	if h := e.bootedOf(cu, "b2"); h.Booted == nil || *h.Booted != "notWatched" {
		t.Errorf("no ConfigDrive: %+v", h)
	}

	// Never phones home.
	b3 := e.server("b3", cu.name)
	if err := cu.bearer.Post(path("b3", "/bringYourOwnImage"), legacyBody(), nil); err != nil {
		t.Fatal(err)
	}
	as3 := b3.pickUp()
	e.secret(strings.TrimPrefix(as3.BootedURL, e.url+agentapi.BootedPrefix))
	b3.mustSend(b3.event("done", job.StepFinish, job.KindInfo, job.MsgDone, job.Text(job.MsgDone), 0, 0))
	e.clock.Advance(14 * time.Minute)
	e.round()
	if h := e.bootedOf(cu, "b3"); *h.Booted != "watching" {
		t.Errorf("warned early: %+v", h)
	}
	e.clock.Advance(2 * time.Minute)
	e.round()
	if h := e.bootedOf(cu, "b3"); *h.Booted != "noSignOfLife" || h.Status != "done" {
		t.Errorf("silent: %+v", h)
	}
	note("b3")
	if m := seen[job.MsgNoSignOfLife]; m != "no sign of life from the new system 15m0s after done" {
		t.Errorf("warning %q", m)
	}
	if strings.Contains(e.logs.String(), "byoi_bt_") {
		t.Error("a phone-home token in the logs")
	}
	_ = context.Background
	return seen
}

// TestDeploymentLogs: a failed deployment's agent posts its log tails;
// byoi-api redacts them again and shows them at .../bringYourOwnImage/logs;
// oversized tails are refused; another server's deployment is not found.
func TestDeploymentLogs(t *testing.T) {
	e := newEnv(t)
	cu := e.customer("acme")
	a := e.server("ns1", "acme")
	b := e.server("ns2", "acme")
	if err := cu.bearer.Post(path("ns1", "/bringYourOwnImage"), legacyBody(), nil); err != nil {
		t.Fatal(err)
	}
	as := a.pickUp()
	a.mustSend(a.event("error", job.StepVerify, job.KindInfo, job.ChecksumMismatch, job.Text(job.ChecksumMismatch, "sha256", "x", "y"), 0, 0))
	l := agentapi.LogTails{Attempt: 1, Kernel: "[    0.0] Kernel command line: quiet byoi.token=byoi_ag_leaked0123456789\n[    3.1] nvme0: ok\n", Agent: "level=ERROR msg=\"checksum mismatch\"\n"}
	if st, ae := a.do("POST", agentapi.LogsPath("ns1", as.DeploymentID), l, nil); st != 204 {
		t.Fatalf("post logs: %d %+v", st, ae)
	}
	if st, _ := b.do("POST", agentapi.LogsPath("ns2", as.DeploymentID), l, nil); st != 404 {
		t.Errorf("another server's deployment: %d", st)
	}
	big := agentapi.LogTails{Attempt: 1, Kernel: strings.Repeat("x", agentapi.MaxLogText+1)}
	if st, _ := a.do("POST", agentapi.LogsPath("ns1", as.DeploymentID), big, nil); st != 400 {
		t.Errorf("oversized tails: %d", st)
	}
	var got struct {
		DeploymentID  int64
		Attempt       int
		Kernel, Agent string
		ReceivedAt    *string
	}
	if err := cu.bearer.Get(path("ns1", "/bringYourOwnImage/logs"), &got); err != nil {
		t.Fatal(err)
	}
	if got.DeploymentID != as.DeploymentID || !strings.Contains(got.Kernel, "nvme0: ok") || strings.Contains(got.Kernel, "byoi_ag_leaked") || got.Agent != l.Agent || got.ReceivedAt == nil {
		t.Errorf("%+v", got)
	}
	if err := cu.bearer.Get(path("ns1", "/bringYourOwnImage/logs?deploymentId=999"), nil); err == nil {
		t.Error("logs of no deployment")
	}
}
