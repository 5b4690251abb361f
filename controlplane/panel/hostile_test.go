package panel_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/byoi/byoi/agentapi"
	"github.com/byoi/byoi/job"
)

// TestBrowserHostile: hostile strings (markup, quotes, unicode) typed in
// the URL, the hostname and the metadata, and sent back in messages by an
// agent (the status message, a warning, install/status, the history),
// appear on the page as text: the same characters, no element created, no
// script run. The job the agent receives holds them exactly as typed.
func TestBrowserHostile(t *testing.T) {
	e, a, ctx := browserOnServer(t)
	openServerPage(t, ctx, e, "ns1", 2)

	hostileURL := `http://127.0.0.1:9/` + pwn + `/"quotes"/'single'/ünïcødé ✓.qcow2`
	meta := [][2]string{{`<b>key</b>"'ü`, pwn + ` "quotes" 'single' ünïcødé ✓`}}
	setField(t, ctx, "#f-imageURL", hostileURL)
	do(t, ctx, chromedp.Click(chromedp.ID("f-configdrive")), chromedp.WaitVisible(chromedp.ID("f-hostname")))
	// a hostile hostname: refused, and the refusal quotes it as text
	setField(t, ctx, "#f-hostname", pwn)
	_, err := job.ParseReinstall([]byte(formCase{url: hostileURL, configDrive: true, hostname: pwn}.body()))
	if err == nil || !strings.Contains(err.Error(), `"<img src=x onerror=`) {
		t.Fatalf("the job package says %v", err)
	}
	want := err.Error()
	waitFor(t, ctx, "the hostname's error", `document.getElementById('e-hostname').textContent === `+jsString(want), 5*time.Second)
	setField(t, ctx, "#f-hostname", "web1")
	do(t, ctx, chromedp.Click(chromedp.ID("add-meta")))
	setField(t, ctx, "#meta-rows .kv-row:nth-child(1) .kv-key", meta[0][0])
	setField(t, ctx, "#meta-rows .kv-row:nth-child(1) .kv-value", meta[0][1])
	noFieldError(t, ctx)
	do(t, ctx, chromedp.Click(chromedp.ID("install-submit")))
	waitFor(t, ctx, "the task", `document.getElementById('submit-note').textContent.includes('task')`, 10*time.Second)

	var j *job.Job
	j, err = job.ParseReinstall(a.pickUp())
	if err != nil || j.ImageURL != hostileURL || j.ConfigDrive.Metadata[meta[0][0]] != meta[0][1] {
		t.Fatalf("the agent's job: %+v %v", j, err)
	}
	// The agent fails the download: OVH's message quotes the URL.
	failed := job.Text(job.DownloadFailed, job.RedactURL(hostileURL))
	a.send(a.event("doing", job.StepPreflight, job.KindInfo, job.MsgPreflight, job.Text(job.MsgPreflight), 0, 0))
	a.send(a.event("doing", job.StepDownload, job.KindWarning, job.WarnImageNote, job.Text(job.WarnImageNote, pwn), 0, 0))
	a.send(a.event("error", job.StepDownload, job.KindInfo, job.DownloadFailed, failed, 0, 0))
	waitFor(t, ctx, "the error", `document.getElementById('status-badge').textContent === 'error'`, 10*time.Second)
	checks := map[string]string{
		"status message": `document.getElementById('status-message').textContent`,
		"step error":     `document.querySelector('#steps .step-error').textContent`,
	}
	for what, expr := range checks {
		if got := eval[string](t, ctx, expr); got != failed {
			t.Errorf("%s: %q, want %q", what, got, failed)
		}
	}
	waitFor(t, ctx, "the warning", `document.querySelector('#warnings li') && document.querySelector('#warnings li').textContent === `+jsString(pwn), 5*time.Second)
	waitFor(t, ctx, "the history", `document.querySelector('#history-body .history-message') && document.querySelector('#history-body .history-message').textContent === `+jsString(failed), 10*time.Second)
	if !eval[bool](t, ctx, noInjection) {
		t.Fatal("something was injected into the page")
	}

	// A second deployment whose agent reports a hostile message of its own.
	do(t, ctx, chromedp.Click(chromedp.ID("install-submit")))
	waitFor(t, ctx, "the second deployment", `document.getElementById('status-badge').textContent === 'doing'`, 10*time.Second)
	a.pickUp()
	msg := job.Text(job.Internal, pwn+` "quotes" 'single' ünïcødé ✓ </td></tr><tr><td>`)
	a.send(a.event("error", job.StepWrite, job.KindInfo, job.Internal, msg, 0, 0))
	waitFor(t, ctx, "the agent's message", `document.getElementById('status-message').textContent === `+jsString(msg), 10*time.Second)
	waitFor(t, ctx, "the history", `document.querySelectorAll('#history-body tr.history-row').length === 2 && document.querySelector('#history-body .history-message').textContent === `+jsString(msg), 10*time.Second)
	if !eval[bool](t, ctx, noInjection) {
		t.Fatal("something was injected into the page")
	}
	if n := eval[int](t, ctx, `document.querySelectorAll('#history-body tr.history-row td').length`); n != 14 {
		t.Fatalf("the history table has %d cells, want 14: markup in a message made cells", n)
	}
	if n := eval[int](t, ctx, `document.querySelectorAll('#history-body tr.history-logs').length`); n != 2 {
		t.Fatalf("%d log rows under the two failed deployments, want 2", n)
	}
}

// TestBrowserFailureLogs: a failed deployment's log tails (issue 25) open
// under it in the history: the kernel's and the agent's, as text (markup
// stays characters, nothing injected), the kernel command line's token
// gone (byoi-api redacts what the agent sent), at most the last 200 lines
// of each; a failure without logs says so.
func TestBrowserFailureLogs(t *testing.T) {
	e, a, ctx := browserOnServer(t)
	openServerPage(t, ctx, e, "ns1", 2)
	const leaked = "byoi_ag_0123456789abcdef0123456789abcdef"
	e.secret(leaked)
	post := func() {
		setField(t, ctx, "#f-imageURL", "http://127.0.0.1:9/img.qcow2")
		do(t, ctx, chromedp.Click(chromedp.ID("install-submit")))
		waitFor(t, ctx, "the deployment", `document.getElementById('status-badge').textContent === 'doing'`, 10*time.Second)
		a.pickUp()
	}
	// The first failure: no logs sent.
	post()
	a.send(a.event("error", job.StepDownload, job.KindInfo, job.DownloadFailed, job.Text(job.DownloadFailed, "http://127.0.0.1:9/img.qcow2"), 0, 0))
	waitFor(t, ctx, "the error", `document.getElementById('status-badge').textContent === 'error'`, 10*time.Second)
	// The second: 250 kernel lines, the command line with the token, hostile markup.
	do(t, ctx, chromedp.Click(chromedp.ID("install-submit")))
	waitFor(t, ctx, "the second deployment", `document.getElementById('status-badge').textContent === 'doing'`, 10*time.Second)
	a.pickUp()
	var kernel strings.Builder
	fmt.Fprintf(&kernel, "[    0.000000] Kernel command line: console=ttyS0 byoi.server=ns1 byoi.token=%s quiet\n", leaked)
	for i := 1; i <= 250; i++ {
		fmt.Fprintf(&kernel, "[ %4d.000000] line %d\n", i, i)
	}
	kernel.WriteString("[  251.000000] nvme0: " + pwn + "\n")
	agentLog := "agent: writing the disk\nagent: " + pwn + " failed\n"
	if st := a.do("POST", agentapi.LogsPath(a.server, a.depl), agentapi.LogTails{Attempt: a.att, Kernel: kernel.String(), Agent: agentLog}, nil); st != 204 {
		t.Fatalf("logs: %d", st)
	}
	a.send(a.event("error", job.StepWrite, job.KindInfo, job.Internal, job.Text(job.Internal, "the disk write failed"), 0, 0))
	waitFor(t, ctx, "the history", `document.querySelectorAll('#history-body tr.history-logs').length === 2`, 10*time.Second)
	// The newest failure is first: open its logs.
	eval[bool](t, ctx, `(document.querySelectorAll('#history-body tr.history-logs summary')[0].click(), true)`)
	waitFor(t, ctx, "the kernel log", `document.querySelector('#history-body pre.log-kernel') !== null`, 10*time.Second)
	kern := eval[string](t, ctx, `document.querySelector('#history-body pre.log-kernel').textContent`)
	ag := eval[string](t, ctx, `document.querySelector('#history-body pre.log-agent').textContent`)
	lines := strings.Split(strings.TrimRight(kern, "\n"), "\n")
	if len(lines) != 200 || !strings.HasSuffix(kern, "nvme0: "+pwn+"\n") || !strings.HasPrefix(lines[0], "[   52.000000] line 52") {
		t.Errorf("the kernel log shows %d lines (want the last 200), first %q, last %q", len(lines), lines[0], lines[len(lines)-1])
	}
	if ag != agentLog {
		t.Errorf("the agent log shows %q, want %q", ag, agentLog)
	}
	if strings.Contains(eval[string](t, ctx, `document.body.innerText`), leaked) {
		t.Error("the token shows on the page")
	}
	if !eval[bool](t, ctx, noInjection) {
		t.Fatal("something was injected into the page")
	}
	// The first failure sent none.
	eval[bool](t, ctx, `(document.querySelectorAll('#history-body tr.history-logs summary')[1].click(), true)`)
	waitFor(t, ctx, "no logs", `[...document.querySelectorAll('#history-body .logs-body p.empty')].some(p => p.textContent === 'The agent sent no logs for this deployment.')`, 10*time.Second)
}

// TestBrowserRescueAndSignOut: "Back to rescue" asks first (cancel changes
// nothing), then erases the status and boots the server to rescue; sign
// out ends the session: the page shows the sign-in, the old session's
// requests get 401.
func TestBrowserRescueAndSignOut(t *testing.T) {
	if testing.Short() {
		t.Skip("browser test")
	}
	e := newEnv(t)
	tok := e.customer("acme")
	a := e.server("ns1", "acme")
	a.inventory(inventory)
	c := e.client()
	c.signIn(tok)
	if st, data := c.call("POST", "/panel/api/dedicated/server/ns1/reinstall", reinstallBody("web1")); st != 200 {
		t.Fatalf("reinstall: %d %s", st, data)
	}
	a.pickUp()
	a.send(a.event("doing", job.StepDownload, job.KindProgress, "", "", 1<<20, 4<<20))
	ctx := newBrowser(t)
	signInBrowser(t, ctx, e, tok)
	openServerPage(t, ctx, e, "ns1", 2)
	waitFor(t, ctx, "the running deployment", `document.getElementById('status-badge').textContent === 'doing' && !document.getElementById('rescue-button').hidden`, 10*time.Second)

	do(t, ctx, chromedp.Click(chromedp.ID("rescue-button")))
	waitFor(t, ctx, "the confirmation", `document.getElementById('rescue-dialog').open && document.getElementById('rescue-server').textContent === 'ns1'`, 5*time.Second)
	do(t, ctx, chromedp.Click(chromedp.ID("rescue-cancel")))
	waitFor(t, ctx, "the dialog closed", `!document.getElementById('rescue-dialog').open`, 5*time.Second)
	time.Sleep(500 * time.Millisecond)
	if st, data := c.call("GET", "/panel/api/dedicated/server/ns1/bringYourOwnImage", ""); st != 200 || !strings.Contains(string(data), `"status":"doing"`) {
		t.Fatalf("cancel changed the deployment: %d %s", st, data)
	}

	do(t, ctx, chromedp.Click(chromedp.ID("rescue-button")))
	waitFor(t, ctx, "the confirmation", `document.getElementById('rescue-dialog').open`, 5*time.Second)
	do(t, ctx, chromedp.Click(chromedp.ID("rescue-confirm")))
	want := job.Text(job.APINoDeployment, "ns1")
	waitFor(t, ctx, "no deployment", `document.getElementById('status-message').textContent === `+jsString(want), 10*time.Second)
	waitFor(t, ctx, "the cancelled deployment in the history", `document.querySelector('#history-body .badge') && document.querySelector('#history-body .badge').textContent === 'cancelled'`, 10*time.Second)
	if got := eval[string](t, ctx, `document.getElementById('info-boot').textContent`); got != "Rescue" {
		t.Fatalf("boot %q", got)
	}
	if st := a.do("POST", "/agent/v1/servers/ns1/deployments/1/events", map[string]any{"attempt": 1, "events": []any{}}, nil); st != 410 {
		t.Fatalf("the agent after back to rescue: %d, want 410", st)
	}

	cookies := eval[string](t, ctx, `document.cookie`)
	if strings.Contains(cookies, "byoi_session") {
		t.Fatal("the session cookie is readable by scripts")
	}
	do(t, ctx, chromedp.Click(chromedp.ID("sign-out")), chromedp.WaitVisible(chromedp.ID("view-signin")))
	if n := eval[int](t, ctx, `document.querySelectorAll('#view-server:not([hidden]), #account:not([hidden])').length`); n != 0 {
		t.Fatal("the server view is still shown after sign-out")
	}
	if st, _ := chromedp.Run(ctx, chromedp.Evaluate[int](`fetch('api/session').then(r => r.status)`, chromedp.EvalAwaitPromise)); st != 401 {
		t.Fatalf("the session after sign-out: %d", st)
	}
}
