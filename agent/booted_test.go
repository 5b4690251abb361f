package agent

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"io"
	"log/slog"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/byoi/byoi/agentapi"
	"github.com/byoi/byoi/internal/logtail"
)

// TestServeBootedURL: the assignment's bootedURL goes into the
// ConfigDrive's vendor_data.json (cloud-init's phone_home); a URL the
// ConfigDrive would refuse is ignored without failing the deployment and
// without being logged.
func TestServeBootedURL(t *testing.T) {
	img := testImage(t, 24*mib, 512)
	// The fake machine boots by BIOS: boot code in the MBR, or the image
	// checks refuse the image.
	copy(img, []byte{0xfa, 0xcd, 0x18})
	url := serve(t, img, "")
	body, _ := json.Marshal(map[string]any{"URL": url, "type": "raw", "checkSum": sumHex(sha256.New(), img), "checkSumType": "sha256",
		"configdrive": map[string]any{"enable": true, "hostname": "web1"}})
	for _, c := range []struct {
		name, booted string
		want         bool
	}{
		{"valid", "http://10.0.2.2:8080/agent/v1/booted/byoi_bt_0123456789abcdef0123456789abcdef", true},
		{"refused", "http://10.0.2.2:8080/agent/v1/booted/byoi_bt_$bad", false},
	} {
		t.Run(c.name, func(t *testing.T) {
			f := &fakePlane{t: t, job: body, token: "tok-123", bootedURL: c.booted}
			srv := httptest.NewServer(f)
			defer srv.Close()
			cl, err := NewClient(srv.URL, "s1", "tok-123", ClientOptions{})
			if err != nil {
				t.Fatal(err)
			}
			var logs bytes.Buffer
			var mu sync.Mutex
			target := oldSystemDisk(t, 32*mib)
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			err = Serve(ctx, AgentConfig{Client: cl, Once: true, ReportInterval: 50 * time.Millisecond, Heartbeat: 100 * time.Millisecond, MaxWait: time.Second,
				Env: Env{Machine: testMachine(t), Target: target, Rebooter: &planeRebooter{f: f}, Options: Options{Logger: slog.New(slog.NewTextHandler(&lockedWriter{mu: &mu, w: &logs}, &slog.HandlerOptions{Level: slog.LevelDebug}))}}})
			if err != nil {
				t.Fatal(err)
			}
			if e, ok := f.final(); !ok || e.Status != "done" {
				t.Fatalf("final %+v", e)
			}
			disk, err := os.ReadFile(target)
			if err != nil {
				t.Fatal(err)
			}
			has := bytes.Contains(disk, []byte("vendor_data.json")) || bytes.Contains(disk, []byte("VENDOR_D"))
			if got := bytes.Contains(disk, []byte(c.booted)); got != c.want {
				t.Errorf("the URL on the disk: %v, want %v (vendor_data present: %v)", got, c.want, has)
			}
			mu.Lock()
			defer mu.Unlock()
			if strings.Contains(logs.String(), "byoi_bt_") {
				t.Errorf("the booted URL in the agent's log:\n%s", logs.String())
			}
		})
	}
}

// TestServeFailureLogs: a failed deployment posts the redacted tails of
// the kernel log and of the agent's own log: no agent token (the kernel
// command line's byoi.token= too, even with quiet), no header value, no
// user data, no phone-home URL; bounded.
func TestServeFailureLogs(t *testing.T) {
	img := testImage(t, 24*mib, 512)
	url := serve(t, img, "")
	const header, userData = "Bearer HDR-s3cret-value-123", "#cloud-config\npassword: USERDATA-s3cret-line\n"
	body, _ := json.Marshal(map[string]any{"URL": url, "type": "raw", "checkSum": strings.Repeat("0", 64), "checkSumType": "sha256",
		"httpHeader":  []map[string]string{{"key": "Authorization", "value": header}},
		"configdrive": map[string]any{"enable": true, "hostname": "web1", "userData": userData}})
	booted := "http://10.0.2.2:8080/agent/v1/booted/byoi_bt_0123456789abcdef0123456789abcdef"
	f := &fakePlane{t: t, job: body, token: "tok-agent-s3cret-123", bootedURL: booted}
	srv := httptest.NewServer(f)
	defer srv.Close()
	cl, err := NewClient(srv.URL, "s1", f.token, ClientOptions{})
	if err != nil {
		t.Fatal(err)
	}
	dmesg := "[    0.000000] Linux version 6.1.0-byoi\n" +
		"[    0.000000] Kernel command line: BOOT_IMAGE=vmlinuz quiet byoi.url=http://10.0.2.2:8080 byoi.server=s1 byoi.token=" + f.token + "\n" +
		"[    3.141592] nvme nvme0: 1/0/0 default/read/poll queues\n" +
		"[    9.000000] oops: header " + header + "\n"
	buf := logtail.NewBuffer(0)
	var mu sync.Mutex
	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(io.MultiWriter(buf, &lockedWriter{mu: &mu, w: &logs}), &slog.HandlerOptions{Level: slog.LevelDebug}))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	err = Serve(ctx, AgentConfig{Client: cl, Once: true, ReportInterval: 50 * time.Millisecond, Heartbeat: 100 * time.Millisecond, MaxWait: time.Second,
		LogTail: buf,
		KernelLog: func(ctx context.Context, o logtail.Options) (logtail.Tail, error) {
			return logtail.From(ctx, strings.NewReader(dmesg), o)
		},
		Env: Env{Machine: testMachine(t), Target: oldSystemDisk(t, 32*mib), Rebooter: &planeRebooter{f: f}, Options: Options{Logger: log}}})
	if err == nil {
		t.Fatal("a wrong checksum succeeded")
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.logs) != 1 {
		t.Fatalf("%d log posts", len(f.logs))
	}
	l := f.logs[0]
	if !strings.Contains(l.Kernel, "nvme nvme0") || !strings.Contains(l.Kernel, "byoi.token="+logtail.Marker) || !strings.Contains(l.Agent, "deployment assigned") || l.Attempt != 1 {
		t.Errorf("tails:\nkernel:\n%s\nagent:\n%s", l.Kernel, l.Agent)
	}
	if len(l.Kernel)+len(l.Agent) > agentapi.MaxLogText {
		t.Errorf("%d bytes", len(l.Kernel)+len(l.Agent))
	}
	for _, s := range []string{f.token, "HDR-s3cret-value-123", "USERDATA-s3cret-line", "byoi_bt_"} {
		if strings.Contains(l.Kernel+l.Agent, s) {
			t.Errorf("%q in the posted tails", s)
		}
	}
}
