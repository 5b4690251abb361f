package e2e

import (
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/byoi/byoi/internal/testutil"
	"github.com/byoi/byoi/job"
)

// interrupted is what the customer reads of a deployment stopped during
// its download (issue 22 point 12).
const interrupted = "the deployment was interrupted during its download step"

// waitOutput waits until p's output holds sub.
func waitOutput(t *testing.T, p *proc, sub string) {
	t.Helper()
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); {
		if strings.Contains(p.out.String(), sub) {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%q never showed:\n%s", sub, tail(p.out.String(), 20))
}

// TestSIGTERMDeployDuringDownload: `byoi deploy` (the shipped binary) gets
// SIGTERM while it downloads: it exits non-zero, its last line says the
// deployment was interrupted and in which step, and nothing reads as a
// download error.
func TestSIGTERMDeployDuringDownload(t *testing.T) {
	t.Parallel()
	build(t)
	img := serveImage(t, 40*mib, false, "")
	img.delay = 25 * time.Millisecond
	disk := testutil.SparseFile(t, 64*mib)
	p := start(t, bins.byoi, "deploy", "--json", "--url", img.url, "--type", "raw", "--disk", disk)
	waitOutput(t, p, `"step":"download","kind":"progress"`)
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := p.wait(t, time.Minute); code == 0 {
		t.Fatal("an interrupted deploy exited 0")
	}
	out := p.out.String()
	if got := tail(out, 1); got != interrupted {
		t.Errorf("last line %q, want %q", got, interrupted)
	}
	if !strings.Contains(out, `"code":"InterruptedStep","message":"`+interrupted+`"`) {
		t.Errorf("no final JSON event saying so:\n%s", tail(out, 5))
	}
	if strings.Contains(out, "Could not download") {
		t.Errorf("the output says the download failed:\n%s", tail(out, 10))
	}
}

// TestSIGTERMAgentDuringDownload: `byoi agent` gets SIGTERM while it
// downloads: the final event it delivers before exiting, which the
// customer reads through OVH's API, says the deployment was interrupted
// in its download step, not that the download failed.
func TestSIGTERMAgentDuringDownload(t *testing.T) {
	t.Parallel()
	a := newAPI(t)
	c := a.addCustomer("acme")
	tok := a.addServer("srv12", "acme")
	img := serveImage(t, 40*mib, false, hdrSecret)
	img.delay = 25 * time.Millisecond
	cl := a.signed(c)
	if err := cl.Post("/dedicated/server/srv12/bringYourOwnImage", legacyBody(img, img.sum), nil); err != nil {
		t.Fatal(err)
	}
	disk, _ := target(t, 64*mib)
	ag := a.agent("srv12", tok, disk, "--once")
	waitDownloading(t, cl, "srv12")
	if err := ag.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := ag.wait(t, time.Minute); code == 0 {
		t.Error("an interrupted agent exited 0")
	}
	st := waitStatus(t, cl, "srv12", 30*time.Second, "error")
	if st.msg() != interrupted {
		t.Errorf("status message %q, want %q", st.msg(), interrupted)
	}
	h := history(t, cl, "srv12")
	last := h.Events[len(h.Events)-1]
	if last.Code != string(job.InterruptedStep) || last.Step != string(job.StepDownload) || last.Message != interrupted {
		t.Errorf("last event %+v", last)
	}
}
