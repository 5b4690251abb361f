package agent

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"log/slog"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestServeBootedURL: the assignment's bootedURL goes into the
// ConfigDrive's vendor_data.json (cloud-init's phone_home); a URL the
// ConfigDrive would refuse is ignored without failing the deployment and
// without being logged.
func TestServeBootedURL(t *testing.T) {
	img := testImage(t, 24*mib, 512)
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
				Env: Env{Machine: testMachine(t), Target: target, Rebooter: &planeRebooter{f: f}, Logger: slog.New(slog.NewTextHandler(&lockedWriter{mu: &mu, w: &logs}, &slog.HandlerOptions{Level: slog.LevelDebug}))}})
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
