package panel_test

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/ovh/go-ovh/ovh"

	"github.com/byoi/byoi/job"
)

// formCase is what a customer enters in "Install from custom image"; body
// is the reinstall body the page's script builds from it (the fields left
// empty are left out; a ConfigDrive field only when the ConfigDrive is
// enabled; header and metadata rows as JSON objects, in their order).
type formCase struct {
	name                   string
	url, checksum, sumType string
	efi                    string
	headers                [][2]string
	configDrive            bool
	hostname, sshKey       string
	meta                   [][2]string
}

func (f formCase) body() string {
	var c []string
	add := func(k string, v any) {
		b, _ := json.Marshal(v)
		kb, _ := json.Marshal(k)
		c = append(c, string(kb)+":"+string(b))
	}
	object := func(k string, rows [][2]string) {
		var kv []string
		for _, r := range rows {
			a, _ := json.Marshal(r[0])
			b, _ := json.Marshal(r[1])
			kv = append(kv, string(a)+":"+string(b))
		}
		kb, _ := json.Marshal(k)
		c = append(c, string(kb)+":{"+strings.Join(kv, ",")+"}")
	}
	add("imageURL", f.url)
	add("imageType", "qcow2")
	if f.checksum != "" {
		add("imageCheckSum", f.checksum)
	}
	if f.sumType != "" {
		add("imageCheckSumType", f.sumType)
	}
	if f.efi != "" {
		add("efiBootloaderPath", f.efi)
	}
	if len(f.headers) > 0 {
		object("httpHeaders", f.headers)
	}
	if f.configDrive {
		if f.hostname != "" {
			add("hostname", f.hostname)
		}
		if f.sshKey != "" {
			add("sshKey", f.sshKey)
		}
		if len(f.meta) > 0 {
			object("configDriveMetadata", f.meta)
		}
	}
	return `{"operatingSystem":"byoi_64","customizations":{` + strings.Join(c, ",") + `},"storage":[{"diskGroupId":1}]}`
}

const goodURL = "http://127.0.0.1:9/images/debian-12.qcow2"

var sum64 = strings.Repeat("ab", 32)

// validationCases is one table of bad inputs, run against the API (go-ovh)
// and the panel (its check, its submit, and the page in chromium). The
// expected message and field are the job package's.
var validationCases = []formCase{
	{name: "url missing", url: ""},
	{name: "url scheme", url: "ftp://images.example.com/i.qcow2"},
	{name: "url no host", url: "http://"},
	{name: "checksum without type", url: goodURL, checksum: sum64},
	{name: "type without checksum", url: goodURL, sumType: "sha256"},
	{name: "checksum format", url: goodURL, checksum: "abc", sumType: "sha256"},
	{name: "checksum md5 length", url: goodURL, checksum: sum64, sumType: "md5"},
	{name: "efi too long", url: goodURL, efi: strings.Repeat(`\efi`, 257)},
	{name: "header name", url: goodURL, headers: [][2]string{{"Bad Name", "v"}}},
	{name: "header twice", url: goodURL, headers: [][2]string{{"X-Token", "a"}, {"x-token", "b"}}},
	{name: "header same name", url: goodURL, headers: [][2]string{{"X-A", "1"}, {"X-A", "2"}}},
	{name: "header no name", url: goodURL, headers: [][2]string{{"", "secret"}}},
	{name: "hostname script", url: goodURL, configDrive: true, hostname: `<script>window.__pwned=1</script>`},
	{name: "hostname quotes unicode", url: goodURL, configDrive: true, hostname: `wéb"'1`},
	{name: "hostname end", url: goodURL, configDrive: true, hostname: "web-"},
	{name: "hostname empty label", url: goodURL, configDrive: true, hostname: "web..example"},
	{name: "ssh key", url: goodURL, configDrive: true, hostname: "web1", sshKey: "not a key"},
	{name: "metadata reserved", url: goodURL, configDrive: true, meta: [][2]string{{"dsmode", "local"}}},
	{name: "metadata empty key", url: goodURL, configDrive: true, meta: [][2]string{{"", "v"}}},
	{name: "metadata same key", url: goodURL, configDrive: true, meta: [][2]string{{"k", "1"}, {"k", "2"}}},
	{name: "valid", url: goodURL, checksum: sum64, sumType: "sha256", configDrive: true, hostname: "web1", meta: [][2]string{{"<b>", `"'ü<script>`}}},
}

// want is the job package's verdict on a case: "" when it passes.
func (f formCase) want(t *testing.T) (field, message string) {
	t.Helper()
	_, err := job.ParseReinstall([]byte(f.body()))
	if err == nil {
		return "", ""
	}
	ve, ok := err.(*job.ValidationError)
	if !ok || ve.Field == "" {
		t.Fatalf("%s: %v has no field", f.name, err)
	}
	return ve.Field, ve.Message
}

// TestValidationTable: for each bad input, the customer API (go-ovh, POST
// .../reinstall), the panel's check and the panel's submit refuse with the
// same message, the same field and code; nothing is created.
func TestValidationTable(t *testing.T) {
	e := newEnv(t)
	tok := e.customer("acme")
	a := e.server("ns1", "acme")
	a.inventory(inventory)
	cl, err := ovh.NewAccessTokenClient(e.url+"/1.0", tok)
	if err != nil {
		t.Fatal(err)
	}
	c := e.client()
	c.signIn(tok)
	for _, f := range validationCases {
		field, msg := f.want(t)
		if f.name == "valid" {
			if msg != "" {
				t.Fatalf("the valid case is refused: %s", msg)
			}
			if st, data := c.call("POST", "/panel/api/validate/ns1", f.body()); st != 200 {
				t.Errorf("valid: panel check %d %s", st, data)
			}
			continue
		}
		if msg == "" {
			t.Fatalf("%s: accepted", f.name)
		}
		var raw json.RawMessage
		err := cl.Post("/dedicated/server/ns1/reinstall", json.RawMessage(f.body()), &raw)
		ae, ok := err.(*ovh.APIError)
		if !ok || ae.Code != 400 || ae.Class != "Client::BadRequest" || ae.Message != msg || ae.Details["field"] != field || ae.Details["code"] == "" {
			t.Errorf("%s: API %#v, want 400 %q at %q", f.name, err, msg, field)
			continue
		}
		for _, p := range []string{"/panel/api/validate/ns1", "/panel/api/dedicated/server/ns1/reinstall"} {
			st, data := c.call("POST", p, f.body())
			pe := decodeErr(t, data)
			if st != 400 || pe.Class != ae.Class || pe.Message != msg || pe.Details["field"] != field || pe.Details["code"] != ae.Details["code"] {
				t.Errorf("%s: %s answers %d %s, want %q at %q", f.name, p, st, data, msg, field)
			}
		}
	}
	if st, data := c.call("GET", "/panel/api/dedicated/server/ns1/bringYourOwnImage/history", ""); st != 200 || string(data) != "[]" {
		t.Fatalf("a refused job created a deployment: %s", data)
	}
	// A disk group the server does not have: the same in both, at its field.
	b := strings.Replace(validationCases[len(validationCases)-1].body(), `"diskGroupId":1`, `"diskGroupId":3`, 1)
	err = cl.Post("/dedicated/server/ns1/reinstall", json.RawMessage(b), nil)
	ae, _ := err.(*ovh.APIError)
	st, data := c.call("POST", "/panel/api/validate/ns1", b)
	if ae == nil || ae.Details["field"] != "storage.diskGroupId" || ae.Details["code"] != string(job.DiskGroupMissing) || st != 400 || decodeErr(t, data).Message != ae.Message {
		t.Fatalf("disk group: API %#v, panel %d %s", err, st, data)
	}
}

// errorTargetOf is where the page shows an error about field: the closest
// element up the JSON path (the script's errorTarget).
func errorTargetOf(field string, targets []string) string {
	has := map[string]bool{}
	for _, s := range targets {
		has[s] = true
	}
	for f := field; ; {
		if has[f] {
			return f
		}
		if f == "" {
			return ""
		}
		cut := max(strings.LastIndex(f, "."), strings.LastIndex(f, "["))
		if cut <= 0 {
			f = ""
		} else {
			f = f[:cut]
		}
	}
}

// TestBrowserValidation: the same table in chromium: each bad input shows,
// next to the field the API names, exactly the API's message, before
// submit (when the field is left) and after submit; the valid case shows
// none.
func TestBrowserValidation(t *testing.T) {
	e, a, ctx := browserOnServer(t)
	for _, f := range validationCases {
		field, msg := f.want(t)
		openServerPage(t, ctx, e, "ns1", 2)
		setField(t, ctx, "#f-imageURL", f.url)
		if f.sumType != "" {
			setField(t, ctx, "#f-checksumType", f.sumType)
		}
		if f.checksum != "" {
			setField(t, ctx, "#f-checksum", f.checksum)
		}
		if f.efi != "" {
			setField(t, ctx, "#f-efi", f.efi)
		}
		for i, h := range f.headers {
			do(t, ctx, chromedp.Click(chromedp.ID("add-header")))
			row := fmt.Sprintf("#headers-rows .kv-row:nth-child(%d) ", i+1)
			setField(t, ctx, row+".kv-key", h[0])
			setField(t, ctx, row+".kv-value", h[1])
		}
		if f.configDrive {
			do(t, ctx, chromedp.Click(chromedp.ID("f-configdrive")), chromedp.WaitVisible(chromedp.ID("f-hostname")))
			if f.hostname != "" {
				setField(t, ctx, "#f-hostname", f.hostname)
			}
			if f.sshKey != "" {
				setField(t, ctx, "#f-sshKey", f.sshKey)
			}
			for i, m := range f.meta {
				do(t, ctx, chromedp.Click(chromedp.ID("add-meta")))
				row := fmt.Sprintf("#meta-rows .kv-row:nth-child(%d) ", i+1)
				setField(t, ctx, row+".kv-key", m[0])
				setField(t, ctx, row+".kv-value", m[1])
			}
		}
		if msg == "" {
			noFieldError(t, ctx)
			continue
		}
		targets := eval[[]string](t, ctx, `[...document.querySelectorAll('[data-error-for]')].map(e => e.dataset.errorFor)`)
		target := errorTargetOf(field, targets)
		sel := `document.querySelector('[data-error-for="` + target + `"]')`
		shown := func(when string) {
			t.Helper()
			deadline := time.Now().Add(5 * time.Second)
			for {
				got := eval[string](t, ctx, sel+`.textContent`)
				if got == msg {
					break
				}
				if time.Now().After(deadline) {
					all := eval[[]string](t, ctx, `[...document.querySelectorAll('[data-error-for]')].map(e => e.dataset.errorFor + ': ' + e.textContent).filter(s => !s.endsWith(': '))`)
					t.Fatalf("%s, %s: the page shows %q at %q (errors: %q), the API says %q at %q", f.name, when, got, target, all, msg, field)
				}
				time.Sleep(50 * time.Millisecond)
			}
			others := eval[int](t, ctx, `[...document.querySelectorAll('[data-error-for]')].filter(e => e.textContent !== '').length`)
			if others != 1 {
				t.Errorf("%s, %s: %d error texts shown", f.name, when, others)
			}
			if !eval[bool](t, ctx, noInjection) {
				t.Fatalf("%s: something was injected into the page", f.name)
			}
		}
		shown("before submit")
		eval[chromedp.Void](t, ctx, sel+`.textContent = ''`)
		do(t, ctx, chromedp.Click(chromedp.ID("install-submit")))
		shown("after submit")
	}
	if st := a.do("GET", "/agent/v1/servers/ns1/job", nil, nil); st != 204 {
		t.Fatalf("a refused form created a deployment (%d)", st)
	}
}
