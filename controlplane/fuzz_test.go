package controlplane_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/byoi/byoi/agentapi"
	"github.com/byoi/byoi/controlplane"
	"github.com/byoi/byoi/job"
)

// serveRaw runs one request through the handler (no network).
func serveRaw(e *env, method, target string, body string, hdr map[string]string) *httptest.ResponseRecorder {
	req := httptest.NewRequest(method, target, strings.NewReader(body))
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	rec := httptest.NewRecorder()
	e.srv.Handler().ServeHTTP(rec, req)
	return rec
}

func checkAnswer(t *testing.T, rec *httptest.ResponseRecorder, allowed ...int) {
	t.Helper()
	if rec.Header().Get("X-Ovh-QueryID") == "" {
		t.Fatalf("no X-Ovh-QueryID")
	}
	for _, s := range allowed {
		if rec.Code == s {
			return
		}
	}
	t.Fatalf("status %d: %s", rec.Code, rec.Body.String())
}

// FuzzJobBodies: any body posted to bringYourOwnImage or reinstall gets
// 200, or 400 with the job package's exact message, never a 5xx.
func FuzzJobBodies(f *testing.F) {
	e := newEnv(f)
	e.customer("acme")
	e.server("ns1", "acme")
	tok := e.secrets[2]
	auth := map[string]string{"Authorization": "Bearer " + tok}
	f.Add(`{"URL":"https://x/i.raw","type":"raw"}`, true)
	f.Add(`{"operatingSystem":"byoi_64","customizations":{"imageURL":"https://x/i","imageType":"qcow2"}}`, false)
	f.Fuzz(func(t *testing.T, body string, legacy bool) {
		p, parse := "/reinstall", job.ParseReinstall
		if legacy {
			p, parse = "/bringYourOwnImage", job.ParseLegacy
		}
		rec := serveRaw(e, "POST", "/1.0"+path("ns1", p), body, auth)
		checkAnswer(t, rec, 200, 400, 413)
		_, err := parse([]byte(body))
		if (err == nil) != (rec.Code == 200) {
			t.Fatalf("status %d but parse error %v", rec.Code, err)
		}
		if err != nil && rec.Code == 400 {
			var got struct{ Message string }
			json.Unmarshal(rec.Body.Bytes(), &got)
			if got.Message != err.(*job.ValidationError).Message {
				t.Fatalf("400 without the job's message %q: %s", err, rec.Body.String())
			}
		}
		if rec.Code == 200 {
			checkAnswer(t, serveRaw(e, "DELETE", "/1.0"+path("ns1", "/bringYourOwnImage"), "", auth), 200)
		}
	})
}

// FuzzInventory: any inventory body gets 204 or 400/413; what is stored
// is served back by specifications/hardware.
func FuzzInventory(f *testing.F) {
	e := newEnv(f)
	e.customer("acme")
	a := e.server("ns1", "acme")
	tok := e.secrets[2]
	f.Add(`{"bootMode":"uefi","diskGroups":[{"diskGroupId":1,"description":"1 X Disk SSD 480 GB, JBOD","diskSize":{"unit":"GB","value":480},"diskType":"SSD","numberOfDisks":1,"raidController":null}],"macs":["52:54:00:AA:bb:cc"]}`)
	f.Add(`{"bootMode":"legacy","diskGroups":[]}`)
	f.Fuzz(func(t *testing.T, body string) {
		rec := serveRaw(e, "POST", agentapi.InventoryPath("ns1"), body, map[string]string{"Authorization": "Bearer " + a.token})
		checkAnswer(t, rec, 204, 400, 413)
		checkAnswer(t, serveRaw(e, "GET", "/1.0"+path("ns1", "/specifications/hardware"), "", map[string]string{"Authorization": "Bearer " + tok}), 200)
	})
}

// FuzzEventBatch: any event batch gets 200, 400, 409 or 410, never 5xx.
func FuzzEventBatch(f *testing.F) {
	e := newEnv(f)
	cu := e.customer("acme")
	a := e.server("ns1", "acme")
	auth := map[string]string{"Authorization": "Bearer " + a.token}
	start := func(t testing.TB) {
		e.t = t // the agent helpers report to the running test
		defer func() { e.t = f }()
		if err := cu.bearer.Post(path("ns1", "/bringYourOwnImage"), legacyBody(), nil); err != nil {
			t.Fatal(err)
		}
		a.pickUp()
	}
	start(f)
	f.Add(`{"attempt":1,"events":[{"seq":1,"time":"2026-01-01T00:00:00Z","status":"doing","step":"download","kind":"progress","message":"","bytesDone":1,"bytesTotal":2}]}`)
	f.Add(`{"attempt":1,"events":[]}`)
	f.Add(`{"attempt":1,"events":[{"seq":9,"time":"2026-01-01T00:00:00Z","status":"error","step":"write","kind":"info","code":"WriteFailed","message":"Can't write raw on disk.","bytesDone":0,"bytesTotal":0}]}`)
	f.Fuzz(func(t *testing.T, body string) {
		rec := serveRaw(e, "POST", agentapi.EventsPath("ns1", a.depl), body, auth)
		checkAnswer(t, rec, 200, 400, 409, 410, 413)
		if rec.Code == 200 && strings.Contains(rec.Body.String(), `"done":true`) {
			serveRaw(e, "DELETE", "/1.0"+path("ns1", "/bringYourOwnImage"), "", map[string]string{"Authorization": "Bearer " + cu.token})
			start(t)
		}
	})
}

// FuzzSignature: any signature headers, URI and host; only the exact
// signature passes, nothing panics or fails with 5xx.
func FuzzSignature(f *testing.F) {
	e := newEnv(f)
	cu := e.customer("acme")
	e.server("ns1", "acme")
	cr := cu.cred
	f.Add(cr.ApplicationKey, cr.ConsumerKey, "0", "$1$00", "/1.0/dedicated/server?x=1", "example.com", "")
	f.Add("", "", "", "", "/1.0/dedicated/server/ns1", "127.0.0.1", "Bearer x")
	f.Add(cr.ApplicationKey, "", "1", "", "/v1/dedicated/server/ns1/boot?bootType=rescue", "h", "")
	f.Fuzz(func(t *testing.T, appKey, consumer, ts, sig, uri, host, authz string) {
		if got := controlplane.SignedURL("", false, host, uri); !strings.HasSuffix(got, uri) {
			t.Fatalf("SignedURL %q does not end with the request URI %q", got, uri)
		}
		if !strings.HasPrefix(uri, "/") || strings.ContainsAny(uri, " \r\n\t#") || strings.ContainsAny(host, "/ \r\n\t@?#") || host == "" {
			return // not a request httptest.NewRequest can build
		}
		req, err := http.NewRequest("GET", "http://"+host+uri, nil)
		if err != nil {
			return
		}
		req.RequestURI = uri // as the server sees it
		req.Body = http.NoBody
		for k, v := range map[string]string{"X-Ovh-Application": appKey, "X-Ovh-Consumer": consumer, "X-Ovh-Timestamp": ts, "X-Ovh-Signature": sig, "Authorization": authz} {
			if v != "" && !strings.ContainsAny(v, "\r\n\x00") {
				req.Header.Set(k, v)
			}
		}
		rec := httptest.NewRecorder()
		e.srv.Handler().ServeHTTP(rec, req)
		checkAnswer(t, rec, 200, 301, 307, 308, 400, 401, 403, 404, 405) // 3xx: the router cleans "/./"
		if rec.Code == 200 && !strings.HasSuffix(uri, "/auth/time") && authz == "" {
			t.Fatalf("a fuzzed signature passed: %q", sig)
		}
	})
}

// FuzzPutServer: any PUT body gets 200, 400, 404 or 413.
func FuzzPutServer(f *testing.F) {
	e := newEnv(f)
	cu := e.customer("acme")
	e.server("ns1", "acme")
	auth := map[string]string{"Authorization": "Bearer " + cu.token}
	f.Add(`{"bootId":1}`)
	f.Add(`{"bootId":2,"efiBootloaderPath":"\\efi\\debian\\grubx64.efi"}`)
	f.Add(`{"BOOTID":1}`)
	f.Fuzz(func(t *testing.T, body string) {
		rec := serveRaw(e, "PUT", "/1.0"+path("ns1", ""), body, auth)
		checkAnswer(t, rec, 200, 400, 404, 413)
	})
}

var _ = context.Background
var _ = http.StatusOK
