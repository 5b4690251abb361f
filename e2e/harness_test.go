// Package e2e runs the real binaries together: byoi-api on 127.0.0.1 with a
// temporary database, OVH's own Go client (go-ovh) as the customer, and
// `byoi agent` deploying onto a loop device or a sparse file, with kill -9
// of either process mid-deployment.
package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/byoi/byoi/internal/testimage"
	"github.com/byoi/byoi/internal/testutil"
	"github.com/ovh/go-ovh/ovh"
)

// bins are the binaries under test, built once.
var bins struct {
	once     sync.Once
	dir      string
	byoi     string
	byoiAPI  string
	buildErr error
}

func TestMain(m *testing.M) {
	code := m.Run()
	if bins.dir != "" {
		os.RemoveAll(bins.dir)
	}
	os.Exit(code)
}

// build compiles byoi and byoi-api (static, as shipped) once.
func build(t *testing.T) {
	t.Helper()
	bins.once.Do(func() {
		dir, err := os.MkdirTemp("", "byoi-e2e-bin")
		if err != nil {
			bins.buildErr = err
			return
		}
		bins.dir = dir
		for name, pkg := range map[string]string{"byoi": "../cmd/byoi", "byoi-api": "../cmd/byoi-api"} {
			cmd := exec.Command("go", "build", "-o", filepath.Join(dir, name), pkg)
			cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
			if out, err := cmd.CombinedOutput(); err != nil {
				bins.buildErr = fmt.Errorf("go build %s: %v\n%s", pkg, err, out)
				return
			}
		}
		bins.byoi, bins.byoiAPI = filepath.Join(dir, "byoi"), filepath.Join(dir, "byoi-api")
	})
	if bins.buildErr != nil {
		t.Fatal(bins.buildErr)
	}
}

// lockedBuffer collects a process's output.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// proc is a running binary.
type proc struct {
	cmd  *exec.Cmd
	out  *lockedBuffer // stdout and stderr
	done chan struct{}
	err  error
}

func start(t *testing.T, name string, args ...string) *proc {
	t.Helper()
	p := &proc{cmd: exec.Command(name, args...), out: &lockedBuffer{}, done: make(chan struct{})}
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.kill()
		if t.Failed() {
			t.Logf("%s output:\n%s", filepath.Base(name), tail(p.out.String(), 60))
		}
	})
	return p
}

// kill sends SIGKILL (kill -9) and waits for the process to be gone.
func (p *proc) kill() {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
}

// wait waits at most d for the process to exit and returns its exit code.
func (p *proc) wait(t *testing.T, d time.Duration) int {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(d):
		t.Fatalf("%s did not exit within %s:\n%s", p.cmd.Path, d, tail(p.out.String(), 40))
	}
	if p.err == nil {
		return 0
	}
	if ee, ok := p.err.(*exec.ExitError); ok {
		return ee.ExitCode()
	}
	return -1
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// api is one byoi-api, its database and its credentials.
type api struct {
	t    *testing.T
	db   string
	port int
	url  string // the root the agent uses
	proc *proc
	logs []*lockedBuffer // every instance's output, for the secret grep
}

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// newAPI prepares a database and starts byoi-api on 127.0.0.1.
func newAPI(t *testing.T, extra ...string) *api {
	t.Helper()
	build(t)
	a := &api{t: t, db: filepath.Join(t.TempDir(), "byoi.db"), port: freePort(t)}
	a.url = "http://127.0.0.1:" + strconv.Itoa(a.port)
	a.serve(extra...)
	return a
}

// serve starts (or restarts) byoi-api on the same port and database.
func (a *api) serve(extra ...string) {
	t := a.t
	args := append([]string{"serve", "--db", a.db, "--listen", "127.0.0.1:" + strconv.Itoa(a.port), "-v"}, extra...)
	a.proc = start(t, bins.byoiAPI, args...)
	a.logs = append(a.logs, a.proc.out)
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		resp, err := http.Get(a.url + "/1.0/auth/time")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("byoi-api did not answer:\n%s", a.proc.out.String())
}

// admin runs a byoi-api admin command with --json and decodes its output.
func (a *api) admin(args ...string) map[string]string {
	a.t.Helper()
	args = append(args, "--db", a.db, "--json")
	out, errOut, err := testutil.RunErr(bins.byoiAPI, args...)
	if err != nil {
		a.t.Fatalf("byoi-api %v: %v: %s", args, err, errOut)
	}
	var m map[string]string
	if err := json.Unmarshal([]byte(out), &m); err != nil {
		a.t.Fatalf("byoi-api %v: output %q: %v", args, out, err)
	}
	return m
}

// customer is a customer with a signature credential and an access token.
type customer struct {
	name               string
	appKey, appSecret  string
	consumerKey, token string
}

func (a *api) addCustomer(name string) customer {
	a.admin("customer", "add", name)
	c := a.admin("credential", "add", "--customer", name)
	tok := a.admin("token", "add", "--customer", name)
	return customer{name: name, appKey: c["applicationKey"], appSecret: c["applicationSecret"],
		consumerKey: c["consumerKey"], token: tok["accessToken"]}
}

// addServer returns the server's agent token.
func (a *api) addServer(name, customer string) string {
	return a.admin("server", "add", name, "--customer", customer)["agentToken"]
}

// signed and bearer are go-ovh clients of the customer.
func (a *api) signed(c customer) *ovh.Client {
	a.t.Helper()
	cl, err := ovh.NewClient(a.url+"/1.0", c.appKey, c.appSecret, c.consumerKey)
	if err != nil {
		a.t.Fatal(err)
	}
	return cl
}

func (a *api) bearer(c customer) *ovh.Client {
	a.t.Helper()
	cl, err := ovh.NewAccessTokenClient(a.url+"/1.0", c.token)
	if err != nil {
		a.t.Fatal(err)
	}
	return cl
}

// status is GET .../bringYourOwnImage.
type status struct {
	Checksum   *string `json:"checksum"`
	Message    *string `json:"message"`
	Servername *string `json:"servername"`
	Status     string  `json:"status"`
}

func (s status) msg() string {
	if s.Message == nil {
		return ""
	}
	return *s.Message
}

func getStatus(t *testing.T, c *ovh.Client, server string) status {
	t.Helper()
	var st status
	if err := c.Get("/dedicated/server/"+server+"/bringYourOwnImage", &st); err != nil {
		t.Fatalf("GET status: %v", err)
	}
	return st
}

// waitStatus polls until the status is one of want (bounded).
func waitStatus(t *testing.T, c *ovh.Client, server string, d time.Duration, want ...string) status {
	t.Helper()
	deadline := time.Now().Add(d)
	var st status
	for time.Now().Before(deadline) {
		st = getStatus(t, c, server)
		for _, w := range want {
			if st.Status == w {
				return st
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("status %q (%q) after %s, want %v", st.Status, st.msg(), d, want)
	return st
}

// image is a test disk image served on 127.0.0.1.
type image struct {
	qcow2 bool
	raw   []byte // the disk it holds
	data  []byte // what is served (raw or qcow2)
	sum   string // sha256 of data
	url   string
	reqs  *int64
	mu    sync.Mutex
	delay time.Duration // per 256 KiB sent: slows the download down
}

const mib = 1 << 20

// serveImage builds a GPT image (qcow2 when qcow2 is set) and serves it
// at /img, requiring header X-Token: token (when not empty).
func serveImage(t *testing.T, size int64, qcow2 bool, token string) *image {
	t.Helper()
	raw, err := testimage.GPT(size, 512, []testimage.Part{
		{Name: "EFI system", Type: testimage.TypeESP, Start: 1 * mib, Size: 4 * mib, Fill: testimage.FillMixed},
		{Name: "root", Type: testimage.TypeLinux, Start: 5 * mib, Size: size - 7*mib, Fill: testimage.FillMixed},
	}, uint64(size))
	if err != nil {
		t.Fatal(err)
	}
	// The fake servers boot by BIOS (no firmware/efi in their sysfs): the
	// image checks want boot code in the MBR (a stub: int 18h).
	copy(raw, []byte{0xfa, 0xcd, 0x18})
	img := &image{raw: raw, data: raw, qcow2: qcow2}
	if qcow2 {
		if img.data, err = testimage.Qcow2(raw, 16); err != nil {
			t.Fatal(err)
		}
	}
	sum := sha256.Sum256(img.data)
	img.sum = hex.EncodeToString(sum[:])
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if token != "" && r.Header.Get("X-Token") != token {
			http.Error(w, "forbidden", http.StatusForbidden)
			return
		}
		img.mu.Lock()
		delay := img.delay
		img.mu.Unlock()
		if delay == 0 {
			http.ServeContent(w, r, "img", time.Time{}, bytes.NewReader(img.data))
			return
		}
		http.ServeContent(w, r, "img", time.Time{}, &slowReader{r: bytes.NewReader(img.data), delay: delay})
	}))
	t.Cleanup(srv.Close)
	img.url = srv.URL + "/img"
	return img
}

// slowReader delays every 256 KiB read.
type slowReader struct {
	r     *bytes.Reader
	delay time.Duration
}

func (s *slowReader) Read(p []byte) (int, error) {
	if len(p) > 256<<10 {
		p = p[:256<<10]
	}
	time.Sleep(s.delay)
	return s.r.Read(p)
}

func (s *slowReader) Seek(off int64, whence int) (int64, error) { return s.r.Seek(off, whence) }

// target is a disk to deploy onto: a loop device over a sparse file when
// running as root, else the sparse file itself.
func target(t *testing.T, size int64) (path, file string) {
	t.Helper()
	file = testutil.SparseFile(t, size)
	if os.Geteuid() == 0 {
		return testutil.LoopDevice(t, file, 0), file
	}
	return file, file
}

// agent starts `byoi agent` for server with its token against a.
func (a *api) agent(server, token, disk string, extra ...string) *proc {
	a.t.Helper()
	args := append([]string{"agent", "--url", a.url, "--server", server, "--token", token, "--disk", disk,
		"--no-reboot", "--report-interval", "200ms", "--heartbeat", "1s", "--memory-reserve", "0", "-v",
		"--cmdline", "/dev/null"}, extra...)
	return start(a.t, bins.byoi, args...)
}

// noSecrets fails when a secret appears in any collected output.
func noSecrets(t *testing.T, outputs []string, secrets ...string) {
	t.Helper()
	for _, out := range outputs {
		for _, s := range secrets {
			if s != "" && strings.Contains(out, s) {
				t.Errorf("secret %.12q... appears in a log", s)
			}
		}
	}
}

// lines counts the lines of out that contain sub.
func lines(out, sub string) int {
	n := 0
	sc := bufio.NewScanner(strings.NewReader(out))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if strings.Contains(sc.Text(), sub) {
			n++
		}
	}
	return n
}

// ctxT is a context bounded for one test.
func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

var _ = io.Discard
