package e2e

import (
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/byoi/byoi/internal/testutil"
	"github.com/byoi/byoi/job"
	"github.com/ovh/go-ovh/ovh"
)

const (
	sshKey     = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIO82/7e9WQiwfzkfAePAXbwRasmsmauPfV02uYKlHDB9 e2e@byoi"
	hdrSecret  = "HDR-SECRET-e2e-4f1c"
	userSecret = "USERDATA-SECRET-e2e-9a7b"
)

func userData() string {
	return "#cloud-config\nruncmd:\n  - echo " + userSecret + "\n"
}

// legacyBody is a legacy bringYourOwnImage body for img with a ConfigDrive.
func legacyBody(img *image, checksum string) map[string]any {
	typ := "raw"
	if img.qcow2 {
		typ = "qcow2"
	}
	return map[string]any{
		"URL": img.url, "type": typ, "checkSum": checksum, "checkSumType": "sha256",
		"httpHeader": []map[string]string{{"key": "X-Token", "value": hdrSecret}},
		"configdrive": map[string]any{
			"enable": true, "hostname": "web1", "sshKey": sshKey, "userData": userData(),
			"userMetadatas": []map[string]string{{"key": "role", "value": "web"}},
		},
	}
}

// eventsOf is the customer's view of the deployment's status history.
type historyView struct {
	Status  string `json:"status"`
	Attempt int    `json:"attempt"`
	Events  []struct {
		Attempt int    `json:"attempt"`
		Seq     int64  `json:"seq"`
		Source  string `json:"source"`
		Status  string `json:"status"`
		Step    string `json:"step"`
		Kind    string `json:"kind"`
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"events"`
}

func history(t *testing.T, c *ovh.Client, server string) historyView {
	t.Helper()
	var h historyView
	if err := c.Get("/dedicated/server/"+server+"/bringYourOwnImage/events?limit=1000", &h); err != nil {
		t.Fatalf("GET events: %v", err)
	}
	return h
}

// TestLegacyQcow2ConfigDrive: the customer POSTs a legacy body through
// go-ovh (signature auth); `byoi agent --no-reboot` pulls it, deploys the
// qcow2 with its ConfigDrive onto a loop device (a sparse file without
// root), reports; GET says done; the disk passes sgdisk, blkid and
// cloud-init's reader; the reboot came once, after the final status was
// stored; no secret in any log.
func TestLegacyQcow2ConfigDrive(t *testing.T) {
	t.Parallel()
	a := newAPI(t)
	c := a.addCustomer("acme")
	tok := a.addServer("srv1", "acme")
	img := serveImage(t, 40*mib, true, hdrSecret)
	cl := a.signed(c)
	if err := cl.Post("/dedicated/server/srv1/bringYourOwnImage", legacyBody(img, img.sum), nil); err != nil {
		t.Fatalf("POST: %v", err)
	}
	if st := getStatus(t, cl, "srv1"); st.Status != "doing" || st.msg() != "starting" {
		t.Errorf("status before the agent: %+v", st)
	}
	disk, _ := target(t, 64*mib)
	ag := a.agent("srv1", tok, disk, "--once")
	if code := ag.wait(t, 2*time.Minute); code != 0 {
		t.Fatalf("agent exit %d:\n%s", code, tail(ag.out.String(), 30))
	}
	st := getStatus(t, cl, "srv1")
	if st.Status != "done" || st.msg() != "done" {
		t.Fatalf("status %+v", st)
	}
	// The agent reboots only after the control plane stored the final
	// status: the status above was already done when it exited, and the
	// reboot happened exactly once, after the final event was sent.
	out := ag.out.String()
	if n := lines(out, "reboot skipped (--no-reboot)"); n != 1 {
		t.Errorf("reboot %d times:\n%s", n, tail(out, 20))
	}
	if i, j := strings.Index(out, "deployment done"), strings.Index(out, "reboot skipped"); i < 0 || j < i {
		t.Errorf("the reboot did not come after the final status:\n%s", tail(out, 20))
	}
	testutil.JudgeDeployedDisk(t, disk, testutil.DeployedWant{Hostname: "web1", SSHKey: sshKey, UserData: []byte(userData()), Meta: map[string]string{"role": "web"}})
	h := history(t, cl, "srv1")
	if h.Status != "done" || len(h.Events) < 5 {
		t.Errorf("history %+v", h)
	}
	var server struct {
		BootID int64 `json:"bootId"`
	}
	if err := cl.Get("/dedicated/server/srv1", &server); err != nil || server.BootID != 1 {
		t.Errorf("boot after done: %+v %v (want harddisk, 1)", server, err)
	}
	logs := []string{ag.out.String()}
	for _, l := range a.logs {
		logs = append(logs, l.String())
	}
	noSecrets(t, logs, tok, c.appSecret, c.consumerKey, c.token, hdrSecret, userSecret)
	// DELETE: the status is erased and the server goes back to rescue.
	if err := cl.Delete("/dedicated/server/srv1/bringYourOwnImage", nil); err != nil {
		t.Fatalf("DELETE: %v", err)
	}
	if err := cl.Get("/dedicated/server/srv1", &server); err != nil || server.BootID != 2 {
		t.Errorf("boot after DELETE: %+v %v (want rescue, 2)", server, err)
	}
}

// task is a reinstall task.
type task struct {
	TaskID   int64   `json:"taskId"`
	Function string  `json:"function"`
	Status   string  `json:"status"`
	DoneDate *string `json:"doneDate"`
}

type installStatus struct {
	ElapsedTime int64 `json:"elapsedTime"`
	Progress    []struct {
		Comment string `json:"comment"`
		Status  string `json:"status"`
		Error   string `json:"error"`
	} `json:"progress"`
}

func reinstallBody(img *image, checksum string) map[string]any {
	return map[string]any{
		"operatingSystem": "byoi_64",
		"customizations": map[string]any{
			"imageURL": img.url, "imageType": "qcow2", "imageCheckSum": checksum, "imageCheckSumType": "sha256",
			"hostname": "web2", "sshKey": sshKey, "configDriveUserData": userData(),
			"configDriveMetadata": map[string]string{"env": "e2e"},
			"httpHeaders":         map[string]string{"X-Token": hdrSecret},
		},
		"storage": []map[string]any{{"diskGroupId": 1}},
	}
}

// TestReinstallStepByStep: the reinstall path through go-ovh with an
// access token; the task and install/status are polled while the agent
// works: the task moves init → doing → done, install/status steps only
// move forward (todo → doing → done) and all end done.
func TestReinstallStepByStep(t *testing.T) {
	t.Parallel()
	a := newAPI(t)
	c := a.addCustomer("acme")
	tok := a.addServer("srv2", "acme")
	img := serveImage(t, 40*mib, true, hdrSecret)
	img.delay = 20 * time.Millisecond // a few seconds of download, to watch
	cl := a.bearer(c)
	var tk task
	if err := cl.Post("/dedicated/server/srv2/reinstall", reinstallBody(img, img.sum), &tk); err != nil {
		t.Fatalf("POST reinstall: %v", err)
	}
	if tk.TaskID < 1 || tk.Function != "reinstallServer" || tk.Status != "init" {
		t.Fatalf("task %+v", tk)
	}
	disk, _ := target(t, 64*mib)
	ag := a.agent("srv2", tok, disk, "--once")
	seen := map[string]bool{}
	rank := map[string]int{"todo": 0, "doing": 1, "done": 2}
	var last []int
	for deadline := time.Now().Add(2 * time.Minute); time.Now().Before(deadline); {
		var cur task
		if err := cl.Get("/dedicated/server/srv2/task/"+itoa(tk.TaskID), &cur); err != nil {
			t.Fatal(err)
		}
		seen[cur.Status] = true
		var is installStatus
		if err := cl.Get("/dedicated/server/srv2/install/status", &is); err != nil {
			t.Fatal(err)
		}
		now := make([]int, len(is.Progress))
		for i, p := range is.Progress {
			r, ok := rank[p.Status]
			if !ok {
				t.Fatalf("step %q status %q", p.Comment, p.Status)
			}
			now[i] = r
			if last != nil && r < last[i] {
				t.Errorf("step %q went back to %s", p.Comment, p.Status)
			}
		}
		last = now
		if cur.Status == "done" {
			for _, p := range is.Progress {
				if p.Status != "done" || p.Error != "" {
					t.Errorf("after done, step %q is %s %q", p.Comment, p.Status, p.Error)
				}
			}
			if cur.DoneDate == nil {
				t.Error("done task without doneDate")
			}
			break
		}
		if cur.Status != "init" && cur.Status != "doing" {
			t.Fatalf("task %+v:\n%s", cur, tail(ag.out.String(), 20))
		}
		time.Sleep(150 * time.Millisecond)
	}
	if !seen["doing"] || !seen["done"] {
		t.Errorf("task statuses seen: %v", seen)
	}
	if code := ag.wait(t, time.Minute); code != 0 {
		t.Fatalf("agent exit %d", code)
	}
	testutil.JudgeDeployedDisk(t, disk, testutil.DeployedWant{Hostname: "web2", SSHKey: sshKey, UserData: []byte(userData()), Meta: map[string]string{"env": "e2e"}})
}

// TestWrongChecksum: the job ends error with OVH's exact message, the task
// customerError, and the agent does not reboot.
func TestWrongChecksum(t *testing.T) {
	t.Parallel()
	a := newAPI(t)
	c := a.addCustomer("acme")
	tok := a.addServer("srv3", "acme")
	img := serveImage(t, 24*mib, true, hdrSecret)
	cl := a.bearer(c)
	bad := strings.Repeat("0", 64)
	var tk task
	if err := cl.Post("/dedicated/server/srv3/reinstall", reinstallBody(img, bad), &tk); err != nil {
		t.Fatal(err)
	}
	disk, _ := target(t, 64*mib)
	ag := a.agent("srv3", tok, disk, "--once")
	if code := ag.wait(t, 2*time.Minute); code != 1 {
		t.Errorf("agent exit %d, want 1", code)
	}
	want := "Bad sha256 for downloaded file, got : " + img.sum + " while expecting " + bad + "."
	st := getStatus(t, cl, "srv3")
	if st.Status != "error" || st.msg() != want {
		t.Errorf("status %q %q, want error %q", st.Status, st.msg(), want)
	}
	var cur task
	if err := cl.Get("/dedicated/server/srv3/task/"+itoa(tk.TaskID), &cur); err != nil || cur.Status != "customerError" {
		t.Errorf("task %+v %v", cur, err)
	}
	if strings.Contains(ag.out.String(), "reboot skipped") {
		t.Error("the agent rebooted after an error")
	}
	var server struct {
		BootID int64 `json:"bootId"`
	}
	if err := cl.Get("/dedicated/server/srv3", &server); err != nil || server.BootID != 2 {
		t.Errorf("boot after an error: %+v %v (want rescue, 2)", server, err)
	}
}

// waitDownloading waits until the customer sees the download move.
func waitDownloading(t *testing.T, cl *ovh.Client, server string) {
	t.Helper()
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); {
		if st := getStatus(t, cl, server); strings.HasPrefix(st.msg(), "downloading") && !strings.HasPrefix(st.msg(), "downloading 0 B") {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatal("the download never showed")
}

// TestKillAPIMidDeployment: kill -9 of byoi-api while the agent downloads,
// and a restart on the same database and port: the history before the
// kill is intact, the agent (which kept its events queued) reconnects and
// finishes, done.
func TestKillAPIMidDeployment(t *testing.T) {
	t.Parallel()
	a := newAPI(t)
	c := a.addCustomer("acme")
	tok := a.addServer("srv4", "acme")
	img := serveImage(t, 40*mib, true, hdrSecret)
	img.delay = 25 * time.Millisecond
	cl := a.signed(c)
	if err := cl.Post("/dedicated/server/srv4/bringYourOwnImage", legacyBody(img, img.sum), nil); err != nil {
		t.Fatal(err)
	}
	disk, _ := target(t, 64*mib)
	ag := a.agent("srv4", tok, disk, "--once")
	waitDownloading(t, cl, "srv4")
	before := history(t, cl, "srv4")
	a.proc.kill()
	time.Sleep(1500 * time.Millisecond)
	a.serve()
	if code := ag.wait(t, 2*time.Minute); code != 0 {
		t.Fatalf("agent exit %d", code)
	}
	st := getStatus(t, cl, "srv4")
	if st.Status != "done" {
		t.Fatalf("status %+v", st)
	}
	after := history(t, cl, "srv4")
	for i, e := range before.Events {
		if i >= len(after.Events) || after.Events[i].Seq != e.Seq || after.Events[i].Message != e.Message {
			t.Fatalf("history before the kill changed at %d: %+v", i, e)
		}
	}
	if lines(ag.out.String(), "retrying") == 0 {
		t.Error("the agent never had to retry: was the API down at all?")
	}
	testutil.JudgeDeployedDisk(t, disk, testutil.DeployedWant{Hostname: "web1", SSHKey: sshKey})
}

// TestKillAgentMidWrite: kill -9 of the agent while it writes a raw image
// (downloaded and written in one pass): the disk shows no partition table
// at all; started again, the agent gets the job re-served, starts over as
// attempt 2 (the history says so) and ends done.
func TestKillAgentMidWrite(t *testing.T) {
	t.Parallel()
	a := newAPI(t)
	c := a.addCustomer("acme")
	tok := a.addServer("srv5", "acme")
	img := serveImage(t, 40*mib, false, hdrSecret)
	img.delay = 25 * time.Millisecond
	cl := a.signed(c)
	if err := cl.Post("/dedicated/server/srv5/bringYourOwnImage", legacyBody(img, img.sum), nil); err != nil {
		t.Fatal(err)
	}
	disk, _ := target(t, 64*mib)
	first := a.agent("srv5", tok, disk)
	waitDownloading(t, cl, "srv5")
	first.kill()
	testutil.RequireCommand(t, "sfdisk", "blkid")
	if out, _, _ := testutil.RunErr("sfdisk", "--dump", disk); strings.Contains(out, "start=") {
		t.Errorf("after kill -9 mid-write, sfdisk finds a table:\n%s", out)
	}
	if out, _, _ := testutil.RunErr("blkid", "-p", disk); strings.TrimSpace(out) != "" {
		t.Errorf("after kill -9 mid-write, blkid finds %q", out)
	}
	img.mu.Lock()
	img.delay = 0
	img.mu.Unlock()
	second := a.agent("srv5", tok, disk, "--once")
	if code := second.wait(t, 2*time.Minute); code != 0 {
		t.Fatalf("second agent exit %d", code)
	}
	if st := getStatus(t, cl, "srv5"); st.Status != "done" {
		t.Fatalf("status %+v", st)
	}
	h := history(t, cl, "srv5")
	restarted := false
	for _, e := range h.Events {
		if e.Code == string(job.MsgRestarted) || strings.Contains(e.Message, "starts over") {
			restarted = true
		}
	}
	if !restarted || h.Attempt != 2 {
		t.Errorf("history does not say the deployment started over (attempt %d)", h.Attempt)
	}
	testutil.JudgeDeployedDisk(t, disk, testutil.DeployedWant{Hostname: "web1", SSHKey: sshKey})
}

// TestAgentKilledForGood: an agent killed and never restarted: after the
// silence timeout the deployment turns error, saying the agent stopped
// reporting.
func TestAgentKilledForGood(t *testing.T) {
	t.Parallel()
	a := newAPI(t, "--agent-timeout", "3s")
	c := a.addCustomer("acme")
	tok := a.addServer("srv6", "acme")
	img := serveImage(t, 40*mib, true, hdrSecret)
	img.delay = 25 * time.Millisecond
	cl := a.bearer(c)
	var tk task
	if err := cl.Post("/dedicated/server/srv6/reinstall", reinstallBody(img, img.sum), &tk); err != nil {
		t.Fatal(err)
	}
	disk, _ := target(t, 64*mib)
	ag := a.agent("srv6", tok, disk)
	waitDownloading(t, cl, "srv6")
	ag.kill()
	st := waitStatus(t, cl, "srv6", 30*time.Second, "error")
	if !strings.HasPrefix(st.msg(), "the agent stopped reporting") {
		t.Errorf("message %q", st.msg())
	}
	var cur task
	if err := cl.Get("/dedicated/server/srv6/task/"+itoa(tk.TaskID), &cur); err != nil || cur.Status != "ovhError" {
		t.Errorf("task %+v %v", cur, err)
	}
}

// TestAPIRefusals: another customer's server is 404 for go-ovh, with OVH's
// error shape.
func TestAPIRefusals(t *testing.T) {
	t.Parallel()
	a := newAPI(t)
	c := a.addCustomer("acme")
	other := a.addCustomer("globex")
	a.addServer("srv7", "acme")
	var st status
	err := a.signed(other).Get("/dedicated/server/srv7/bringYourOwnImage", &st)
	var ae *ovh.APIError
	if !errors.As(err, &ae) || ae.Code != 404 || ae.Class != "Client::NotFound" || ae.QueryID == "" {
		t.Errorf("other customer's server: %v", err)
	}
	bad := c
	bad.appSecret = strings.Repeat("x", len(c.appSecret))
	err = a.signed(bad).Get("/dedicated/server", nil)
	if !errors.As(err, &ae) || ae.Message != "Invalid signature" {
		t.Errorf("bad signature: %v", err)
	}
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }
