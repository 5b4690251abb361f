package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"regexp"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/byoi/byoi/agentapi"
	"github.com/byoi/byoi/controlplane"
	"github.com/byoi/byoi/controlplane/store/pgstore/pgtest"
	"github.com/byoi/byoi/job"
)

// syncBuffer is a stderr shared by a serving instance and the test.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

var servingAddr = regexp.MustCompile(`msg="byoi-api serving" addr=(\S+)`)

// startInstance runs `byoi-api serve` on args until the test ends and
// returns its base URL.
func startInstance(t *testing.T, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	errb := &syncBuffer{}
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, append([]string{"serve", "--listen", "127.0.0.1:0"}, args...), io.Discard, errb)
	}()
	t.Cleanup(func() {
		cancel()
		if code := <-done; code != 0 {
			t.Errorf("instance exited %d: %s", code, errb.String())
		}
	})
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if m := servingAddr.FindStringSubmatch(errb.String()); m != nil {
			return "http://" + m[1]
		}
		select {
		case code := <-done:
			done <- code
			t.Fatalf("instance exited %d: %s", code, errb.String())
		default:
		}
	}
	t.Fatalf("instance did not start: %s", errb.String())
	return ""
}

// TestTwoInstancesPostgres: two byoi-api processes' worth of serve on one
// PostgreSQL. 50 POSTs for one server race across both: exactly one is
// accepted, 49 get OVH's 409. The agent then talks to either instance at
// random and the customer sees the result on the other.
func TestTwoInstancesPostgres(t *testing.T) {
	dsn := pgtest.DSN(t)
	kf := filepath.Join(t.TempDir(), "byoi.key")
	admin := func(args ...string) map[string]string {
		t.Helper()
		var out, errb bytes.Buffer
		if code := run(context.Background(), append(args, "--db", dsn, "--key-file", kf, "--json"), &out, &errb); code != 0 {
			t.Fatalf("%v: exit %d: %s", args, code, errb.String())
		}
		var m map[string]string
		if err := json.Unmarshal(out.Bytes(), &m); err != nil {
			t.Fatal(err)
		}
		return m
	}
	admin("customer", "add", "acme")
	cred := admin("credential", "add", "--customer", "acme")
	agentTok := admin("server", "add", "ns1", "--customer", "acme")["agentToken"]

	var out, errb bytes.Buffer
	if code := run(context.Background(), []string{"customer", "add", "x", "--db", dsn}, &out, &errb); code == 0 {
		t.Fatal("PostgreSQL without --key-file accepted")
	}

	urls := []string{
		startInstance(t, "--db", dsn, "--key-file", kf),
		startInstance(t, "--db", dsn, "--key-file", kf),
	}
	client := &http.Client{Timeout: 30 * time.Second}
	signed := func(base, method, path string, body []byte) (int, []byte) {
		url := base + "/1.0" + path
		req, _ := http.NewRequest(method, url, bytes.NewReader(body))
		ts := time.Now().Unix()
		req.Header.Set("X-Ovh-Application", cred["applicationKey"])
		req.Header.Set("X-Ovh-Consumer", cred["consumerKey"])
		req.Header.Set("X-Ovh-Timestamp", strconv.FormatInt(ts, 10))
		req.Header.Set("X-Ovh-Signature", controlplane.Sign(cred["applicationSecret"], cred["consumerKey"], method, url, body, ts))
		resp, err := client.Do(req)
		if err != nil {
			t.Error(err)
			return 0, nil
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, b
	}
	agent := func(base, method, path string, body any) (int, []byte) {
		var r io.Reader = http.NoBody
		if body != nil {
			b, _ := json.Marshal(body)
			r = bytes.NewReader(b)
		}
		req, _ := http.NewRequest(method, base+path, r)
		req.Header.Set("Authorization", "Bearer "+agentTok)
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, b
	}

	body := []byte(`{"operatingSystem":"byoi_64","customizations":{"imageURL":"https://images.example.com/d.qcow2","imageType":"qcow2","hostname":"web1"}}`)
	var mu sync.Mutex
	statuses := map[int]int{}
	var taskBody []byte
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			// Each its own body: 50 byte-identical requests signed in one
			// second would be replays (issue 22), refused with 400.
			code, b := signed(urls[i%2], "POST", "/dedicated/server/ns1/reinstall", bytes.Replace(body, []byte(`"web1"`), fmt.Appendf(nil, `"web%d"`, i+1), 1))
			mu.Lock()
			defer mu.Unlock()
			statuses[code]++
			if code == http.StatusOK {
				taskBody = b
			} else if code == http.StatusConflict && !bytes.Contains(b, []byte("TaskAlreadyExists")) {
				t.Errorf("409 without the OVH class: %s", b)
			}
		}()
	}
	close(start)
	wg.Wait()
	if statuses[http.StatusOK] != 1 || statuses[http.StatusConflict] != 49 {
		t.Fatalf("answers %v, want one 200 and 49 409", statuses)
	}
	var task struct{ TaskID int64 }
	json.Unmarshal(taskBody, &task)

	// The agent: job from one instance, attempt on the other, events on
	// either; the customer reads on both.
	code, b := agent(urls[1], "GET", agentapi.JobPath("ns1"), nil)
	var as agentapi.Assignment
	if code != http.StatusOK || json.Unmarshal(b, &as) != nil {
		t.Fatalf("job: %d %s", code, b)
	}
	code, b = agent(urls[0], "POST", agentapi.AttemptsPath("ns1", as.DeploymentID), nil)
	if code != http.StatusOK {
		t.Fatalf("attempt: %d %s", code, b)
	}
	steps := []job.Event{
		{Status: job.StatusDoing, Step: job.StepPreflight, Kind: job.KindInfo},
		{Status: job.StatusDoing, Step: job.StepDownload, Kind: job.KindProgress, BytesDone: 1 << 20, BytesTotal: 4 << 20},
		{Status: job.StatusDoing, Step: job.StepDownload, Kind: job.KindProgress, BytesDone: 4 << 20, BytesTotal: 4 << 20},
		{Status: job.StatusDone, Step: job.StepFinish, Kind: job.KindInfo, Code: job.MsgDone, Message: job.Text(job.MsgDone)},
	}
	for i, e := range steps {
		e.Seq, e.Time = int64(i+1), time.Now()
		code, b = agent(urls[i%2], "POST", agentapi.EventsPath("ns1", as.DeploymentID), agentapi.EventBatch{Attempt: 1, Events: []job.Event{e}})
		var ack agentapi.Ack
		if code != http.StatusOK || json.Unmarshal(b, &ack) != nil || ack.Seq != e.Seq || ack.Done != e.Final() {
			t.Fatalf("event %d: %d %s", i+1, code, b)
		}
	}
	for _, u := range urls {
		code, b := signed(u, "GET", "/dedicated/server/ns1/bringYourOwnImage", nil)
		if code != http.StatusOK || !bytes.Contains(b, []byte(`"status":"done"`)) {
			t.Errorf("%s: %d %s", u, code, b)
		}
		code, b = signed(u, "GET", fmt.Sprintf("/dedicated/server/ns1/task/%d", task.TaskID), nil)
		if code != http.StatusOK || !bytes.Contains(b, []byte(`"status":"done"`)) {
			t.Errorf("%s task: %d %s", u, code, b)
		}
	}
}
