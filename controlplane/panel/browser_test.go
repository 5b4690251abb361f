package panel_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"golang.org/x/crypto/ssh"

	"github.com/byoi/byoi/internal/testimage"
	"github.com/byoi/byoi/internal/testutil"
	"github.com/byoi/byoi/job"
)

// The browser tests drive Debian's chromium, headless, through the Chrome
// DevTools Protocol (chromedp). In CI a missing chromium is a failure.

// newBrowser starts chromium with a fresh profile and returns a tab.
func newBrowser(t *testing.T) context.Context {
	t.Helper()
	path := testutil.RequireCommand(t, "chromium")
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(path),
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("lang", "en-US"),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1280, 900),
	)
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelTab := chromedp.NewContext(actx, chromedp.WithLogf(t.Logf))
	ctx, cancelTime := context.WithTimeout(ctx, 6*time.Minute)
	t.Cleanup(func() {
		cancelTime()
		cancelTab()
		cancelAlloc()
	})
	if err := chromedp.Do(ctx); err != nil { // starts the browser
		t.Fatalf("chromium: %v", err)
	}
	return ctx
}

func do(t *testing.T, ctx context.Context, actions ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	if err := chromedp.Do(ctx, actions...); err != nil {
		t.Fatalf("browser: %v", err)
	}
}

// eval evaluates a JavaScript expression in the page (the DevTools
// protocol's evaluation: not a script of the page, so the CSP does not
// apply to it).
func eval[T any](t *testing.T, ctx context.Context, expr string) T {
	t.Helper()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](expr))
	if err != nil {
		t.Fatalf("evaluate %.80s: %v", expr, err)
	}
	return v
}

// waitFor polls a JavaScript condition until it holds.
func waitFor(t *testing.T, ctx context.Context, what, cond string, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if eval[bool](t, ctx, "!!("+cond+")") {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("waiting for %s: %s did not hold within %s", what, cond, d)
}

func jsString(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// setField sets a form control's value as a user would leave it: focus,
// value, input and change events, blur.
func setField(t *testing.T, ctx context.Context, sel, value string) {
	t.Helper()
	eval[chromedp.Void](t, ctx, `(() => {
		const e = document.querySelector(`+jsString(sel)+`);
		e.focus();
		e.value = `+jsString(value)+`;
		e.dispatchEvent(new Event('input', {bubbles: true}));
		e.dispatchEvent(new Event('change', {bubbles: true}));
		e.blur();
	})()`)
}

// screenshots is where the tests save what the page looks like.
var screenshots struct {
	once sync.Once
	dir  string
}

// screenshot saves the page: the whole page, or what a 1280×900 window
// shows from the top.
func screenshot(t *testing.T, ctx context.Context, name string, whole bool) {
	t.Helper()
	screenshots.once.Do(func() {
		dir := os.Getenv("BYOI_SCREENSHOTS")
		if dir == "" {
			dir, _ = os.MkdirTemp("", "byoi-panel-screenshots-")
		}
		os.MkdirAll(dir, 0o755)
		screenshots.dir = dir
		fmt.Printf("panel screenshots: %s\n", dir)
	})
	shot := chromedp.FullScreenshot(100) // PNG
	if !whole {
		eval[chromedp.Void](t, ctx, `window.scrollTo(0, 0)`)
		shot = chromedp.CaptureScreenshot()
	}
	buf, err := chromedp.Run(ctx, shot)
	if err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	p := filepath.Join(screenshots.dir, name)
	if err := os.WriteFile(p, buf, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot %s", p)
}

// signInBrowser opens the panel and signs in with an access token, typed.
func signInBrowser(t *testing.T, ctx context.Context, e *env, token string) {
	t.Helper()
	do(t, ctx,
		chromedp.Navigate(e.url+"/panel/"),
		chromedp.WaitVisible(chromedp.ID("signin-token")),
		chromedp.SendKeys(chromedp.ID("signin-token"), token),
		chromedp.Click(chromedp.ID("signin-submit")),
		chromedp.WaitVisible(chromedp.ID("view-servers")),
	)
	waitFor(t, ctx, "the server list", `document.querySelector('#servers-body a')`, 10*time.Second)
}

// openServerPage loads the server's page and waits for its form.
func openServerPage(t *testing.T, ctx context.Context, e *env, name string, groups int) {
	t.Helper()
	// a new document each time (a URL that differs only by its fragment
	// would not load the page again)
	do(t, ctx, chromedp.Navigate(fmt.Sprintf("%s/panel/?load=%d#server/%s", e.url, time.Now().UnixNano(), name)), chromedp.WaitVisible(chromedp.ID("card-install")))
	waitFor(t, ctx, "the disk groups", fmt.Sprintf(`document.querySelectorAll('#f-diskGroup option').length === %d`, groups), 10*time.Second)
	waitFor(t, ctx, "the status", `document.getElementById('status-message').textContent !== ''`, 10*time.Second)
}

// browserOnServer is the set-up of the browser tests on one server:
// customer acme signed in, in a new browser, with server ns1 (its agent
// sent the test inventory). The caller opens the page it needs. Skipped
// with -short.
func browserOnServer(t *testing.T) (*env, *agent, context.Context) {
	t.Helper()
	if testing.Short() {
		t.Skip("browser test")
	}
	e := newEnv(t)
	tok := e.customer("acme")
	a := e.server("ns1", "acme")
	a.inventory(inventory)
	ctx := newBrowser(t)
	signInBrowser(t, ctx, e, tok)
	return e, a, ctx
}

// pwn is markup that would run a script or make an element if a page
// put it in as HTML rather than text.
const pwn = `<img src=x onerror="window.__pwned=1"><script>window.__pwned=2</script><b>bold</b>`

// sshKey is a valid ed25519 public key line.
func sshKey(t *testing.T, seed byte) string {
	t.Helper()
	priv := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{seed}, 32))
	pub, err := ssh.NewPublicKey(priv.Public())
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(ssh.MarshalAuthorizedKey(pub))) + " panel@test"
}

// pageHas: no element the hostile strings could have created exists, and
// no script of theirs ran.
const noInjection = `(() => {
	const scripts = [...document.scripts].filter(s => !s.src.endsWith('/static/app.js'));
	const imgs = [...document.images].filter(i => !i.src.endsWith('/static/favicon.svg'));
	return scripts.length === 0 && imgs.length === 0 && !document.querySelector('b, iframe, svg, a[href^="javascript"]') && window.__pwned === undefined;
})()`

// byoiBin is the real agent binary, built once.
var byoiBin struct {
	once sync.Once
	path string
	err  error
}

func buildByoi(t *testing.T) string {
	t.Helper()
	byoiBin.once.Do(func() {
		dir, err := os.MkdirTemp("", "byoi-panel-bin-")
		if err != nil {
			byoiBin.err = err
			return
		}
		byoiBin.path = filepath.Join(dir, "byoi")
		cmd := exec.Command("go", "build", "-o", byoiBin.path, "../../cmd/byoi")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			byoiBin.err = fmt.Errorf("go build ../../cmd/byoi: %v\n%s", err, out)
		}
	})
	if byoiBin.err != nil {
		t.Fatal(byoiBin.err)
	}
	return byoiBin.path
}

func TestMain(m *testing.M) {
	code := m.Run()
	if byoiBin.path != "" {
		os.RemoveAll(filepath.Dir(byoiBin.path))
	}
	os.Exit(code)
}

// slowImage serves a qcow2 image on 127.0.0.1, only with the right header,
// slowly enough (about 6 s) that the page can show the download moving.
type slowImage struct {
	url  string
	raw  []byte
	data []byte
	sum  string
}

func serveSlowImage(t *testing.T, header, value string) *slowImage {
	t.Helper()
	const mib = 1 << 20
	size := int64(24 * mib)
	raw, err := testimage.GPT(size, 512, []testimage.Part{
		{Name: "EFI system", Type: testimage.TypeESP, Start: 1 * mib, Size: 4 * mib, Fill: testimage.FillMixed},
		{Name: "root", Type: testimage.TypeLinux, Start: 5 * mib, Size: size - 7*mib, Fill: testimage.FillMixed},
	}, 16)
	if err != nil {
		t.Fatal(err)
	}
	// The fake server boots by BIOS (no firmware/efi in its sysfs): the
	// image checks want boot code in the MBR (a stub: int 18h).
	copy(raw, []byte{0xfa, 0xcd, 0x18})
	data, err := testimage.Qcow2(raw, 16)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(data)
	img := &slowImage{raw: raw, data: data, sum: hex.EncodeToString(sum[:])}
	rate := float64(len(data)) / 6 // bytes per second: about 6 s for the whole image
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get(header) != value {
			http.Error(w, "forbidden", http.StatusForbidden)
			return
		}
		http.ServeContent(w, r, "image.qcow2", time.Time{}, &slowReader{r: bytes.NewReader(data), rate: rate})
	}))
	t.Cleanup(srv.Close)
	img.url = srv.URL + "/images/debian-12.qcow2"
	return img
}

// slowReader reads at rate bytes per second, 64 KiB at most at a time.
type slowReader struct {
	r    *bytes.Reader
	rate float64
}

func (s *slowReader) Read(p []byte) (int, error) {
	if len(p) > 64<<10 {
		p = p[:64<<10]
	}
	n, err := s.r.Read(p)
	time.Sleep(time.Duration(float64(n) / s.rate * float64(time.Second)))
	return n, err
}

func (s *slowReader) Seek(off int64, whence int) (int64, error) { return s.r.Seek(off, whence) }

// runAgent runs the real `byoi agent --once --no-reboot` for a server onto
// disk, and returns a channel with its exit error and its output.
func runAgent(t *testing.T, e *env, a *agent, disk string) (<-chan error, *bytes.Buffer) {
	t.Helper()
	bin := buildByoi(t)
	var out bytes.Buffer
	cmd := exec.Command(bin, "agent", "--url", e.url, "--server", a.server, "--token", a.token, "--disk", disk,
		"--no-reboot", "--once", "--report-interval", "200ms", "--heartbeat", "1s", "--memory-reserve", "0", "--cmdline", "/dev/null", "-v")
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		if t.Failed() {
			t.Logf("agent output:\n%s", out.String())
		}
	})
	return done, &out
}

// progressSample is what the page shows of a running deployment.
type progressSample struct {
	Status  string  `json:"status"`
	Message string  `json:"message"`
	Shown   bool    `json:"shown"`
	Value   float64 `json:"value"`
	Max     float64 `json:"max"`
	Numbers string  `json:"numbers"`
	Rate    string  `json:"rate"`
	Step    string  `json:"step"`
}

const sampleJS = `(() => {
	const bar = document.getElementById('progress-bar');
	return {
		status: document.getElementById('status-badge').textContent,
		message: document.getElementById('status-message').textContent,
		shown: !document.getElementById('progress-block').hidden,
		value: bar.hasAttribute('value') ? bar.value : -1,
		max: bar.max,
		numbers: document.getElementById('progress-numbers').textContent,
		rate: document.getElementById('progress-rate').textContent,
		step: document.getElementById('progress-step').textContent,
	};
})()`

// fillInstallForm fills the form as a customer does: typing into the
// text fields, choosing in the selects, adding rows.
func fillInstallForm(t *testing.T, ctx context.Context, img *slowImage, checksum, headerName, headerValue, hostname, key, userData string, meta [][2]string) {
	t.Helper()
	// (chromedp.Clear resets the value attribute, not what was typed)
	setField(t, ctx, "#f-imageURL", "")
	do(t, ctx, chromedp.SendKeys(chromedp.ID("f-imageURL"), img.url))
	setField(t, ctx, "#f-imageType", "qcow2")
	setField(t, ctx, "#f-checksumType", "sha256")
	setField(t, ctx, "#f-checksum", "")
	do(t, ctx, chromedp.SendKeys(chromedp.ID("f-checksum"), checksum))
	if eval[int](t, ctx, `document.querySelectorAll('#headers-rows .kv-row').length`) == 0 {
		do(t, ctx, chromedp.Click(chromedp.ID("add-header")))
		do(t, ctx, chromedp.SendKeys(chromedp.CSS("#headers-rows .kv-row:nth-child(1) .kv-key"), headerName))
	}
	do(t, ctx, chromedp.SendKeys(chromedp.CSS("#headers-rows .kv-row:nth-child(1) .kv-value"), headerValue))
	if !eval[bool](t, ctx, `document.getElementById('f-configdrive').checked`) {
		do(t, ctx, chromedp.Click(chromedp.ID("f-configdrive")), chromedp.WaitVisible(chromedp.ID("f-hostname")))
		do(t, ctx,
			chromedp.SendKeys(chromedp.ID("f-hostname"), hostname),
			chromedp.SendKeys(chromedp.ID("f-sshKey"), key),
		)
		for i, kv := range meta {
			do(t, ctx, chromedp.Click(chromedp.ID("add-meta")))
			row := fmt.Sprintf("#meta-rows .kv-row:nth-child(%d) ", i+1)
			setField(t, ctx, row+".kv-key", kv[0])
			setField(t, ctx, row+".kv-value", kv[1])
		}
	}
	setField(t, ctx, "#f-userData", userData)
	do(t, ctx, chromedp.Click(chromedp.ID("f-efi"))) // leaves the last field: a check runs
}

// noFieldError waits until the form's checks came back clean.
func noFieldError(t *testing.T, ctx context.Context) {
	t.Helper()
	waitFor(t, ctx, "the form's check", `document.getElementById('install-form').dataset.checked`, 10*time.Second)
	var errs []string
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		errs = eval[[]string](t, ctx, `[...document.querySelectorAll('[data-error-for]')].map(e => e.textContent).filter(s => s !== '')`)
		if len(errs) == 0 {
			return
		}
	}
	t.Fatalf("the form shows errors: %q", errs)
}

// TestBrowserDeploy: in chromium, a customer signs in, opens a server,
// fills "Install from custom image" with a qcow2 image served on
// 127.0.0.1 (a checksum, an HTTP header the image server requires, a
// ConfigDrive with hostname, SSH key, user data and metadata) and submits;
// the real `byoi agent --no-reboot` deploys onto a sparse file; the page
// shows the download moving (bytes, percentage, rate) and ends at done
// without a reload; the disk passes the deployed-disk judges (sgdisk -v,
// blkid, cloud-init's reader). Then a wrong checksum ends with OVH's
// message on the page. Screenshots of the form, the progress and the end
// are saved.
func TestBrowserDeploy(t *testing.T) {
	if testing.Short() {
		t.Skip("browser test")
	}
	testutil.RequireCommand(t, "sgdisk", "sfdisk", "blkid", "xorriso")
	testutil.RequireCloudInit(t)
	e := newEnv(t)
	tok := e.customer("acme")
	a := e.server("ns1.example", "acme")
	a.inventory(inventory)
	const headerName, headerValue = "X-Image-Token", "IMG-HEADER-s3cret-v4lue"
	userData := "#cloud-config\n# PANEL-USERDATA-s3cret\nruncmd: [touch /root/panel]\n"
	e.secret(headerValue, "PANEL-USERDATA-s3cret")
	img := serveSlowImage(t, headerName, headerValue)
	key := sshKey(t, 7)
	meta := [][2]string{{"role", "web"}, {`team<b>"'ü`, `<img src=x onerror="window.__pwned=1">"quotes" 'single' ünïcødé`}}
	buildByoi(t) // before the clock of the deployment starts

	ctx := newBrowser(t)
	signInBrowser(t, ctx, e, tok)
	waitFor(t, ctx, "the server list's disks", `document.getElementById('servers-body').textContent.includes('2 X Disk NVME 1920 GB, JBOD')`, 10*time.Second)
	screenshot(t, ctx, "panel-servers.png", false)
	do(t, ctx, chromedp.Click(chromedp.CSS("#servers-body a")), chromedp.WaitVisible(chromedp.ID("card-install")))
	openServerPage(t, ctx, e, "ns1.example", 2)
	if got := eval[string](t, ctx, `document.getElementById('info-disks').textContent`); !strings.Contains(got, "1: 2 X Disk NVME 1920 GB, JBOD") {
		t.Fatalf("disk groups: %q", got)
	}

	fillInstallForm(t, ctx, img, img.sum, headerName, headerValue, "panel-web1", key, userData, meta)
	noFieldError(t, ctx)
	screenshot(t, ctx, "panel-form.png", true)

	eval[chromedp.Void](t, ctx, `window.__sameDocument = 1`)
	do(t, ctx, chromedp.Click(chromedp.ID("install-submit")))
	waitFor(t, ctx, "the task", `document.getElementById('submit-note').textContent.includes('task')`, 10*time.Second)
	// the secrets typed are gone from the page
	if got := eval[string](t, ctx, `[...document.querySelectorAll('input, textarea')].map(e => e.value).join('\n') + document.body.innerText`); strings.Contains(got, headerValue) || strings.Contains(got, "PANEL-USERDATA-s3cret") {
		t.Fatal("a secret is still on the page after submit")
	}
	disk := testutil.SparseFile(t, 64<<20)
	agentDone, _ := runAgent(t, e, a, disk)

	var samples []progressSample
	shot := false
	deadline := time.Now().Add(3 * time.Minute)
	for {
		s := eval[progressSample](t, ctx, sampleJS)
		samples = append(samples, s)
		if !shot && s.Status == "doing" && s.Max > 0 && s.Value > 0.3*s.Max && s.Value < 0.8*s.Max && s.Rate != "" {
			screenshot(t, ctx, "panel-progress.png", false)
			shot = true
		}
		if s.Status == "done" || s.Status == "error" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no end after 3 minutes: %+v", s)
		}
		time.Sleep(120 * time.Millisecond)
	}
	select {
	case err := <-agentDone:
		if err != nil {
			t.Fatalf("agent: %v", err)
		}
	case <-time.After(time.Minute):
		t.Fatal("the agent did not exit")
	}
	// The bar moved: several distinct partial values, each step's bytes
	// growing, a rate shown.
	distinct := map[float64]bool{}
	rate := false
	for _, s := range samples {
		if s.Status == "doing" && s.Shown && s.Value > 0 && s.Value < s.Max {
			distinct[s.Value] = true
			if strings.HasSuffix(s.Rate, "/s") && strings.Contains(s.Numbers, " of ") {
				rate = true
			}
		}
	}
	if len(distinct) < 3 || !rate || !shot {
		t.Fatalf("the progress did not move on the page: %d distinct values, rate %v, screenshot %v; samples %+v", len(distinct), rate, shot, samples)
	}
	last := samples[len(samples)-1]
	if last.Status != "done" || last.Message != job.Text(job.MsgDone) || last.Value != last.Max {
		t.Fatalf("end: %+v", last)
	}
	waitFor(t, ctx, "every step done", `[...document.querySelectorAll('#steps li')].every(li => li.className === 'done')`, 5*time.Second)
	waitFor(t, ctx, "the history", `document.querySelector('#history-body .badge') && document.querySelector('#history-body .badge').textContent === 'done'`, 10*time.Second)
	waitFor(t, ctx, "the booted watch in the history", `document.querySelector('#history-body .history-booted') && document.querySelector('#history-body .history-booted').textContent === 'watching'`, 10*time.Second)
	waitFor(t, ctx, "boot to disk", `document.getElementById('info-boot').textContent === 'Disk'`, 10*time.Second)
	if eval[int](t, ctx, `window.__sameDocument || 0`) != 1 {
		t.Fatal("the page was reloaded")
	}
	if !eval[bool](t, ctx, noInjection) {
		t.Fatal("something was injected into the page")
	}
	screenshot(t, ctx, "panel-done.png", false)

	testutil.JudgeDeployedDisk(t, disk, testutil.DeployedWant{
		Hostname: "panel-web1", SSHKey: key, UserData: []byte(userData),
		Meta: map[string]string{meta[0][0]: meta[0][1], meta[1][0]: meta[1][1]},
	})

	// A wrong checksum: OVH's message, on the page, without a reload.
	bad := strings.Repeat("0", 64)
	fillInstallForm(t, ctx, img, bad, headerName, headerValue, "", "", userData, nil)
	noFieldError(t, ctx)
	do(t, ctx, chromedp.Click(chromedp.ID("install-submit")))
	waitFor(t, ctx, "the second task", `document.getElementById('status-badge').textContent === 'doing'`, 10*time.Second)
	disk2 := testutil.SparseFile(t, 64<<20)
	agentDone, _ = runAgent(t, e, a, disk2)
	want := "Bad sha256 for downloaded file, got : " + img.sum + " while expecting " + bad + "."
	if want != job.Text(job.ChecksumMismatch, "sha256", img.sum, bad) {
		t.Fatalf("the catalog's message changed: %q", job.Text(job.ChecksumMismatch, "sha256", img.sum, bad))
	}
	waitFor(t, ctx, "the checksum error", `document.getElementById('status-badge').textContent === 'error'`, 3*time.Minute)
	if got := eval[string](t, ctx, `document.getElementById('status-message').textContent`); got != want {
		t.Fatalf("message on the page %q, want %q", got, want)
	}
	waitFor(t, ctx, "the step's error", `[...document.querySelectorAll('#steps .step-error')].some(e => e.textContent === `+jsString(want)+`)`, 5*time.Second)
	waitFor(t, ctx, "the history", `document.querySelectorAll('#history-body tr.history-row').length === 2 && document.querySelector('#history-body .history-message').textContent === `+jsString(want), 10*time.Second)
	if eval[int](t, ctx, `window.__sameDocument || 0`) != 1 {
		t.Fatal("the page was reloaded")
	}
	screenshot(t, ctx, "panel-error.png", false)
	select {
	case err := <-agentDone:
		if err == nil {
			t.Fatal("the agent exited 0 after a checksum error")
		}
	case <-time.After(time.Minute):
		t.Fatal("the agent did not exit")
	}
}
