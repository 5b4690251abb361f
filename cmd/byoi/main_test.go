package main

import (
	"bytes"
	"context"
	"crypto/md5"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/byoi/byoi/blockdev/blockdevtest"
	"github.com/byoi/byoi/job"

	"github.com/byoi/byoi/imagecheck"
	"github.com/byoi/byoi/internal/testutil"
)

func runCLI(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var so, se bytes.Buffer
	code = run(context.Background(), args, strings.NewReader(""), &so, &se)
	return code, so.String(), se.String()
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return lines[len(lines)-1]
}

func TestDemo(t *testing.T) {
	testutil.RequireCommand(t, "sgdisk", "blkid")
	disk := filepath.Join(t.TempDir(), "demo.img")
	code, out, errOut := runCLI(t, "demo", "--disk", disk)
	if code != 0 {
		t.Fatalf("demo exit %d\nstdout: %s\nstderr: %s", code, out, errOut)
	}
	for _, want := range []string{"checksum verified", "partition table: gpt", "EFI system", "root", "config-2", "ConfigDrive"} {
		if !strings.Contains(out, want) {
			t.Errorf("demo output lacks %q:\n%s", want, out)
		}
	}
	if v := testutil.Run(t, "sgdisk", "-v", disk); !strings.Contains(v, "No problems found") {
		t.Errorf("sgdisk -v on the demo disk: %s", v)
	}
	// A newcomer's first screen: the demo's own image passes the checks,
	// no warning line at all (issue 26).
	if strings.Contains(out+errOut, "warning:") || strings.Contains(out+errOut, "level=WARN") || strings.Count(out, "image checks: 0 refusals, 0 warnings") != 2 {
		t.Errorf("the demo warns about its own image:\nstdout: %s\nstderr: %s", out, errOut)
	}
}

// TestDemoImagePassesChecks: the demo image boots either way as far as the
// checks can tell (an ESP with \EFI\BOOT\BOOTX64.EFI, MBR boot code).
func TestDemoImagePassesChecks(t *testing.T) {
	img, err := demoImage(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, mode := range []string{imagecheck.BootUEFI, imagecheck.BootLegacy} {
		rep, err := imagecheck.Check(context.Background(), bytes.NewReader(img), int64(len(img)), 512, imagecheck.Facts{BootMode: mode, ConfigDrive: true}, imagecheck.Options{})
		if err != nil {
			t.Fatal(err)
		}
		if len(rep.Refusals())+len(rep.Warnings()) != 0 {
			t.Errorf("%s: %v", mode, rep.Findings)
		}
	}
}

func serveBytes(t *testing.T, data []byte) string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.ServeContent(w, r, "img", time.Time{}, bytes.NewReader(data))
	}))
	t.Cleanup(srv.Close)
	return srv.URL + "/img"
}

func sparse(t *testing.T, size int64) string { return testutil.SparseFile(t, size) }

func TestDeployJSONEventsAndJobFile(t *testing.T) {
	img, err := demoImage(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(img)
	url := serveBytes(t, img)
	jobFile := filepath.Join(t.TempDir(), "job.json")
	body := `{"operatingSystem":"byoi_64","customizations":{"imageURL":"` + url + `","imageType":"raw",` +
		`"imageCheckSum":"` + hex.EncodeToString(sum[:]) + `","imageCheckSumType":"sha256","hostname":"web1"}}`
	if err := os.WriteFile(jobFile, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	code, out, errOut := runCLI(t, "deploy", "--json", "--job", jobFile, "--disk", sparse(t, 128<<20))
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	var events []job.Event
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		var e job.Event
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			t.Fatalf("not a JSON event: %q: %v", line, err)
		}
		events = append(events, e)
	}
	if len(events) < 3 {
		t.Fatalf("only %d events", len(events))
	}
	if last := events[len(events)-1]; last.Status != "done" || last.Code != job.MsgDone {
		t.Errorf("last event %+v", last)
	}
	sawBytes := false
	for i, e := range events {
		if e.Seq != int64(i+1) || e.Time.IsZero() || e.Kind == "" {
			t.Errorf("event %d lacks seq, time or kind: %+v", i, e)
		}
		if e.Step == job.StepDownload && e.Kind == job.KindProgress && e.BytesDone > 0 && e.BytesTotal == int64(len(img)) {
			sawBytes = true
		}
	}
	if !sawBytes {
		t.Error("no progress event with bytes for the write step")
	}
}

func TestDeployFailureMessageIsLastLine(t *testing.T) {
	img, err := demoImage(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	url := serveBytes(t, img)
	const secret = "HDR-SECRET-93"
	code, out, errOut := runCLI(t, "deploy", "--url", url, "--type", "raw", "--checksum", strings.Repeat("0", 32),
		"--checksum-type", "md5", "--header", "X-Auth: "+secret, "--disk", sparse(t, 128<<20))
	if code == 0 {
		t.Fatal("a wrong checksum exited 0")
	}
	sum := md5sum(img)
	want := "Bad md5 for downloaded file, got : " + sum + " while expecting " + strings.Repeat("0", 32) + "."
	if lastLine(errOut) != want {
		t.Errorf("last stderr line %q, want %q", lastLine(errOut), want)
	}
	if strings.Contains(out+errOut, secret) {
		t.Error("header value shown")
	}
}

func TestDeployUsageErrors(t *testing.T) {
	for _, args := range [][]string{
		{"deploy"},
		{"deploy", "--job", "x.json", "--url", "http://127.0.0.1/x"},
		{"nope"},
	} {
		if code, _, _ := runCLI(t, args...); code != 2 {
			t.Errorf("%v: exit %d, want 2", args, code)
		}
	}
	code, _, errOut := runCLI(t, "deploy", "--url", "ftp://x/y", "--type", "raw", "--disk", sparse(t, 1<<20))
	if code != 1 || !strings.Contains(lastLine(errOut), "http") {
		t.Errorf("ftp URL: exit %d, %q", code, errOut)
	}
	code, _, errOut = runCLI(t, "deploy", "--url", "http://127.0.0.1/x", "--type", "vmdk", "--disk", sparse(t, 1<<20))
	if code != 1 || lastLine(errOut) != "Bad format image, expected : qcow2, raw, ova." {
		t.Errorf("vmdk: exit %d, %q", code, errOut)
	}
}

// TestStaticBinary builds the rescue binary as CI and users do and checks
// it is statically linked.
func TestStaticBinary(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	testutil.RequireCommand(t, "file")
	bin := filepath.Join(t.TempDir(), "byoi")
	cmd := exec.Command("go", "build", "-o", bin, ".")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	out := testutil.Run(t, "file", bin)
	if !strings.Contains(out, "statically linked") {
		t.Errorf("not static: %s", out)
	}
}

func md5sum(b []byte) string {
	h := md5.Sum(b)
	return hex.EncodeToString(h[:])
}

// fakeMachine builds a machine of virtio disks (name → size) whose device
// nodes are sparse files, with an empty mount table.
func fakeMachine(t *testing.T, disks map[string]int64) (sys, proc, dev string) {
	t.Helper()
	r := blockdevtest.Virtio(disks).Build(t, true)
	return r.Sys, r.Proc, r.Dev
}

// TestDeployDiskGroup selects the target by disk group from a fake
// machine: group 1 is the larger disk, group 2 the smaller; a group that
// does not exist names the ones that do.
func TestDeployDiskGroup(t *testing.T) {
	img, err := demoImage(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	url := serveBytes(t, img)
	sys, proc, dev := fakeMachine(t, map[string]int64{"vda": 128 << 20, "vdb": 256 << 20})
	roots := []string{"--sysfs", sys, "--procfs", proc, "--devfs", dev}

	code, out, _ := runCLI(t, "disks", "--sysfs", sys)
	if code != 0 || !strings.Contains(out, "vda") || !strings.Contains(out, "vdb") {
		t.Fatalf("disks: %d %s", code, out)
	}
	code, _, errOut := runCLI(t, append([]string{"deploy", "--url", url, "--type", "raw", "--disk-group", "2"}, roots...)...)
	if code != 0 {
		t.Fatalf("deploy: %s", errOut)
	}
	got, err := os.ReadFile(filepath.Join(dev, "vda"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got[1<<20:len(img)-(1<<20)], img[1<<20:len(img)-(1<<20)]) {
		t.Error("group 2 (vda) did not receive the image")
	}
	other, err := os.ReadFile(filepath.Join(dev, "vdb"))
	if err != nil {
		t.Fatal(err)
	}
	if len(other) != 256<<20 || !bytes.Equal(other, make([]byte, len(other))) {
		t.Error("group 1 (vdb) was written")
	}
	code, _, errOut = runCLI(t, append([]string{"deploy", "--url", url, "--type", "raw", "--disk-group", "3"}, roots...)...)
	if code == 0 || !strings.Contains(lastLine(errOut), "disk group 3 does not exist on this server: the groups are 1") || !strings.Contains(lastLine(errOut), "2 (") {
		t.Errorf("group 3: exit %d, %q", code, lastLine(errOut))
	}
}

// TestDeployInterruptedIsLastLine: SIGTERM or Ctrl-C during the download
// (main's signal.NotifyContext cancels run's context) ends with the
// interruption and its step as the last stderr line, not with a download
// error ("Could not download image located : URL. context canceled"), and
// a non-zero exit.
func TestDeployInterruptedIsLastLine(t *testing.T) {
	img, err := demoImage(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	sent := make(chan struct{})
	var once sync.Once
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(len(img)))
		w.WriteHeader(http.StatusOK)
		w.Write(img[:len(img)/2])
		w.(http.Flusher).Flush()
		once.Do(func() { close(sent) })
		<-r.Context().Done()
	}))
	defer srv.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		<-sent
		time.Sleep(300 * time.Millisecond)
		cancel()
	}()
	var so, se bytes.Buffer
	code := run(ctx, []string{"deploy", "--url", srv.URL + "/img", "--type", "raw", "--disk", sparse(t, 128<<20)}, strings.NewReader(""), &so, &se)
	if code == 0 {
		t.Fatal("an interrupted deploy exited 0")
	}
	if got, want := lastLine(se.String()), "the deployment was interrupted during its download step"; got != want {
		t.Errorf("last stderr line %q, want %q", got, want)
	}
	if strings.Contains(so.String()+se.String(), "Could not download") {
		t.Errorf("the output says the download failed:\n%s\n%s", so.String(), se.String())
	}
}
