package controlplane_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/byoi/byoi/agentapi"
	"github.com/byoi/byoi/controlplane"
	"github.com/byoi/byoi/controlplane/netboot"
	"github.com/byoi/byoi/controlplane/store/open"
	"github.com/byoi/byoi/job"
	"github.com/ovh/go-ovh/ovh"
)

// Issue 22: trusting the network less. Each test here reproduces one of
// the defects found by an attacker's try, through the real HTTP server.

// head sends an anonymous HEAD and returns its status.
func head(t *testing.T, e *env, p string) int {
	t.Helper()
	resp, err := http.Head(e.url + p)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// TestBootHeadNeverMints: a HEAD of a server's script neither mints nor
// revokes (before, one anonymous HEAD re-minted the token and the running
// agent's next event got 401); a GET while the agent heartbeats gets the
// script without a token and the agent keeps working; an unknown MAC and
// an unarmed one get the same bytes, naming no server.
func TestBootHeadNeverMints(t *testing.T) {
	bothStores(t, func(t *testing.T, backend envOpt) {
		e := newEnv(t, withNetboot(t), backend)
		cu := e.customer("acme")
		const mac = "52:54:00:12:34:56"
		p := "/boot/mac/52-54-00-12-34-56.ipxe"
		if _, err := e.admin.AddServer(context.Background(), "ns1", "acme", mac); err != nil {
			t.Fatal(err)
		}
		// Armed (a new server): HEADs do not take its token.
		for i := 0; i < 3; i++ {
			if st := head(t, e, p); st != 200 {
				t.Fatalf("HEAD: %d", st)
			}
		}
		a := &agent{e: e, server: "ns1", token: rescueToken(t, e, mac, "ns1")}
		a.inventory(inv)
		if err := cu.signed.Post(path("ns1", "/bringYourOwnImage"), legacyBody(), nil); err != nil {
			t.Fatal(err)
		}
		a.pickUp()
		// A deployment running: HEAD and GET change nothing.
		for i := 0; i < 3; i++ {
			head(t, e, p)
			noToken(t, e, mac)
		}
		a.mustSend(a.event("doing", job.StepDownload, job.KindProgress, "", "", 10, 100))
		// Unknown and unarmed MACs: the same bytes, no server name.
		_, unknown := get(t, e, "/boot/mac/02-00-00-00-00-01.ipxe")
		_, unarmed := get(t, e, p)
		if unknown != unarmed || strings.Contains(unarmed, "ns1") || strings.Contains(unarmed, "byoi.token") {
			t.Fatalf("unknown:\n%s\nunarmed:\n%s", unknown, unarmed)
		}
		if unarmed != netboot.NoTokenScript(bootURL, "console=ttyS0,115200") {
			t.Fatalf("not the script without a token:\n%s", unarmed)
		}
	})
}

// TestBootTokenEnds: a token a rescue script minted ends 15 minutes
// after a final done when no disk script revoked it first (before, it
// read the next reinstall's job for ever); after a final error it keeps
// working while the agent waits in rescue; an operator's token (server
// add, server token) is never ended by a deployment.
func TestBootTokenEnds(t *testing.T) {
	bothStores(t, func(t *testing.T, backend envOpt) {
		e := newEnv(t, withNetboot(t), backend)
		cu := e.customer("acme")
		ctx := context.Background()
		if _, err := e.admin.AddServer(ctx, "ns1", "acme", "52:54:00:12:34:56"); err != nil {
			t.Fatal(err)
		}
		a := &agent{e: e, server: "ns1", token: rescueToken(t, e, "52:54:00:12:34:56", "ns1")}
		a.inventory(inv)
		// An error: the token stays.
		if err := cu.signed.Post(path("ns1", "/bringYourOwnImage"), legacyBody(), nil); err != nil {
			t.Fatal(err)
		}
		a.pickUp()
		if ack := a.mustSend(a.event("error", job.StepVerify, job.KindInfo, job.WriteFailed, job.Text(job.WriteFailed, "raw"), 0, 0)); !ack.Done {
			t.Fatalf("ack %+v", ack)
		}
		e.clock.Advance(time.Hour)
		a.inventory(inv)
		// Done: 14 minutes on it works, 16 minutes on it does not.
		done(t, cu, a)
		e.clock.Advance(14 * time.Minute)
		a.inventory(inv)
		e.clock.Advance(2 * time.Minute)
		if st, _ := a.do("GET", agentapi.JobPath("ns1"), nil, nil); st != 401 {
			t.Fatalf("a rescue token 16 minutes after done: %d, want 401", st)
		}

		// The operator's token outlives its deployments.
		b := e.server("ns2", "acme")
		b.inventory(inv)
		done(t, cu, b)
		e.clock.Advance(time.Hour)
		b.inventory(inv)
		tok, err := e.admin.NewAgentToken(ctx, "ns2")
		if err != nil {
			t.Fatal(err)
		}
		e.secret(tok)
		if st, _ := b.do("GET", agentapi.JobPath("ns2"), nil, nil); st != 401 {
			t.Fatalf("a replaced operator token: %d, want 401", st)
		}
		b.token = tok
		b.inventory(inv)
	})
}

// TestBootRateLimit: /boot is limited per source address; X-Forwarded-For
// names the source only when the peer is a trusted proxy.
func TestBootRateLimit(t *testing.T) {
	direct := newEnv(t, withNetbootRate(t, 1, 1))
	if st, _ := get(t, direct, "/boot/boot.ipxe"); st != 200 {
		t.Fatal(st)
	}
	// A forged X-Forwarded-For from an untrusted peer changes nothing.
	if st, _ := get(t, direct, "/boot/boot.ipxe", "X-Forwarded-For", "10.0.0.9"); st != 429 {
		t.Fatalf("an untrusted forwarded-for escaped the limit: %d", st)
	}
	nb := withNetbootRate(t, 1, 1)
	proxied := newEnv(t, func(ec *envConfig) {
		nb(ec)
		ec.Netboot.TrustedProxies = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}
	})
	for i := 0; i < 3; i++ {
		if st, _ := get(t, proxied, "/boot/boot.ipxe", "X-Forwarded-For", fmt.Sprintf("10.0.0.%d", i)); st != 200 {
			t.Fatalf("source %d behind the proxy: %d", i, st)
		}
	}
	if st, _ := get(t, proxied, "/boot/boot.ipxe", "X-Forwarded-For", "10.0.0.1"); st != 429 {
		t.Fatalf("a source's second request: %d, want 429", st)
	}
}

// TestBodyAfterAuthentication: an anonymous request's body is never read
// (before, three anonymous 40 MiB bodies held 90 MiB and a trickling one
// stayed open past 30 s): it is refused at once, with the connection
// closed, holding no body memory.
func TestBodyAfterAuthentication(t *testing.T) {
	e := newEnv(t)
	e.customer("acme")
	e.server("ns1", "acme")
	for _, hdr := range []map[string]string{
		{"Content-Type": "application/json"},
		{"Authorization": "Bearer byoi_at_wrong", "Content-Type": "application/json"},
		{"X-Ovh-Application": "nope", "X-Ovh-Consumer": "nope", "X-Ovh-Timestamp": fmt.Sprint(e.clock.Now().Unix()), "X-Ovh-Signature": "$1$00"},
	} {
		c := startSlow(t, e.url, "POST", "/1.0"+path("ns1", "/bringYourOwnImage"), hdr, 40<<20, "{")
		st, _, _, _ := c.answer(3 * time.Second)
		if st != 401 && st != 403 {
			t.Errorf("%v: %d, want 401 or 403", hdr, st)
		}
		if !c.closedWithin(3 * time.Second) {
			t.Errorf("%v: the connection stays open for the unread body", hdr)
		}
		if n := e.srv.BodyMemoryInUse(); n != 0 {
			t.Errorf("%v: %d bytes of body memory held", hdr, n)
		}
	}
	// The same for the agent API.
	c := startSlow(t, e.url, "POST", agentapi.InventoryPath("ns1"), map[string]string{"Authorization": "Bearer byoi_ag_wrong"}, agentapi.MaxInventoryBody, "{")
	if st, _, _, _ := c.answer(3 * time.Second); st != 401 {
		t.Errorf("agent API: %d, want 401", st)
	}
}

// TestTrickledBody: an authenticated body sent a byte every 300 ms is cut
// off at its deadline.
func TestTrickledBody(t *testing.T) {
	e := newEnv(t, cfg(func(c *controlplane.Config) { c.BodyTimeout = time.Second; c.BodyMinRate = 1 << 30 }))
	cu := e.customer("acme")
	e.server("ns1", "acme")
	c := startSlow(t, e.url, "PUT", "/1.0"+path("ns1", ""), map[string]string{"Authorization": "Bearer " + cu.token}, 100, "{")
	start := time.Now()
	go func() {
		for i := 0; i < 20 && c.write(" ") == nil; i++ {
			time.Sleep(300 * time.Millisecond)
		}
	}()
	st, _, _, _ := c.answer(5 * time.Second)
	if st != 408 || time.Since(start) > 4*time.Second {
		t.Fatalf("a trickled body: %d after %s, want 408 within about 1 s", st, time.Since(start))
	}
}

// TestAccessTokenRevokeAndExpiry: a revoked access token fails at once;
// one made with an expiry fails after it; revoking ends the panel
// sessions made with it; the lists show their status.
func TestAccessTokenRevokeAndExpiry(t *testing.T) {
	bothStores(t, func(t *testing.T, backend envOpt) {
		e := newEnv(t, backend)
		ctx := context.Background()
		cu := e.customer("acme")
		e.server("ns1", "acme")
		tok, id, err := e.admin.AddTokenFor(ctx, "acme", time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		e.secret(tok)
		c, _ := ovh.NewAccessTokenClient(e.url+"/1.0", tok)
		var names []string
		if err := c.Get("/dedicated/server", &names); err != nil {
			t.Fatal(err)
		}
		e.clock.Advance(61 * time.Minute)
		wantAPIErr(t, c.Get("/dedicated/server", &names), 401, "Client::Unauthorized", "")
		// Revoked: at once (also a session made with it).
		browser := panelSignIn(t, e, cu.token)
		ts, err := e.admin.Tokens(ctx, "acme")
		if err != nil || len(ts) != 2 {
			t.Fatalf("tokens %+v %v", ts, err)
		}
		status := map[int64]string{}
		for _, s := range ts {
			status[s.ID] = s.Status
		}
		if status[id] != "expired" {
			t.Fatalf("token list: %+v", ts)
		}
		for _, s := range ts {
			if s.ID != id {
				if err := e.admin.RevokeToken(ctx, s.ID); err != nil {
					t.Fatal(err)
				}
			}
		}
		wantAPIErr(t, cu.bearer.Get("/dedicated/server", &names), 401, "Client::Unauthorized", "")
		if st, _, _, _ := plainDo(t, browser, "GET", e.url+"/panel/api/dedicated/server", "", nil); st != 401 {
			t.Fatalf("a panel session of a revoked token: %d, want 401", st)
		}
		// Credentials: expiry, and OVH's /me/api/credential.
		cr, err := e.admin.AddCredentialFor(ctx, "acme", time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		e.secret(cr.ApplicationSecret, cr.ConsumerKey)
		var ids []int64
		if err := cu.signed.Get("/me/api/credential", &ids); err != nil || len(ids) != 2 {
			t.Fatalf("/me/api/credential: %v %v", ids, err)
		}
		exp, _ := ovh.NewClient(e.url+"/1.0", cr.ApplicationKey, cr.ApplicationSecret, cr.ConsumerKey)
		if err := exp.Get("/dedicated/server", &names); err != nil {
			t.Fatal(err)
		}
		e.clock.Advance(61 * time.Minute)
		exp, _ = ovh.NewClient(e.url+"/1.0", cr.ApplicationKey, cr.ApplicationSecret, cr.ConsumerKey) // go-ovh keeps the clock's offset
		wantAPIErr(t, exp.Get("/dedicated/server", &names), 403, "Client::Forbidden", "")
	})
}

// panelSignIn signs in to the panel with token and returns the browser.
func panelSignIn(t *testing.T, e *env, token string) *http.Client {
	t.Helper()
	jar, _ := cookiejar.New(nil)
	browser := &http.Client{Jar: jar}
	st, page, _, _ := plainDo(t, browser, "GET", e.url+"/panel/", "", nil)
	m := panelCSRF.FindSubmatch(page)
	if st != 200 || m == nil {
		t.Fatalf("panel page: %d", st)
	}
	st, body, _, _ := plainDo(t, browser, "POST", e.url+"/panel/api/login", `{"token":"`+token+`"}`, map[string]string{"X-CSRF-Token": string(m[1])})
	if st != 200 {
		t.Fatalf("panel sign-in: %d %s", st, body)
	}
	if st, _, _, _ := plainDo(t, browser, "GET", e.url+"/panel/api/dedicated/server", "", nil); st != 200 {
		t.Fatalf("panel session: %d", st)
	}
	return browser
}

// TestKeyCheck: a database opened with another key file, or with its key
// file missing, is refused with what to do (before, a new key was made
// and secrets were sealed under it); a new database gets its key.
func TestKeyCheck(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	db := filepath.Join(dir, "byoi.db")
	st, keys, err := open.Store(ctx, db, "")
	if err != nil {
		t.Fatal(err)
	}
	a := &controlplane.Admin{Store: st, Keys: keys}
	if err := a.AddCustomer(ctx, "acme"); err != nil {
		t.Fatal(err)
	}
	st.Close()
	if fi, err := os.Stat(db); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("database file mode: %v %v, want 0600", fi, err)
	}
	other := filepath.Join(dir, "other.key")
	if _, err := controlplane.CreateKey(other); err != nil {
		t.Fatal(err)
	}
	if _, _, err := open.Store(ctx, db, other); err == nil || !strings.Contains(err.Error(), "is not the key of") {
		t.Fatalf("another key file: %v", err)
	}
	if err := os.Rename(db+".key", filepath.Join(dir, "moved.key")); err != nil {
		t.Fatal(err)
	}
	if _, _, err := open.Store(ctx, db, ""); err == nil || !strings.Contains(err.Error(), "key file") || !strings.Contains(err.Error(), "restore") {
		t.Fatalf("a missing key file: %v", err)
	}
	if _, err := os.Stat(db + ".key"); err == nil {
		t.Fatal("a key file was made for a database with data")
	}
	st, _, err = open.Store(ctx, db, filepath.Join(dir, "moved.key"))
	if err != nil {
		t.Fatalf("the right key: %v", err)
	}
	st.Close()
}

// TestPanelStaticIndex: the panel's static directory has no index (before,
// it served the page's raw template).
func TestPanelStaticIndex(t *testing.T) {
	e := newEnv(t)
	for _, p := range []string{"/panel/static/", "/panel/static", "/panel/static/index.html"} {
		st, body := get(t, e, p)
		if st != 404 || strings.Contains(body, "{{") {
			t.Errorf("GET %s: %d %.80q", p, st, body)
		}
	}
}

// TestListenerParts: each listener serves only its parts (--listen,
// --agent-listen, --boot-listen).
func TestListenerParts(t *testing.T) {
	e := newEnv(t, withNetboot(t))
	cu := e.customer("acme")
	a := e.server("ns1", "acme")
	for _, c := range []struct {
		parts          controlplane.Part
		cust, ag, boot int
	}{
		{controlplane.PartCustomer, 200, 404, 404},
		{controlplane.PartAgent, 404, 204, 404},
		{controlplane.PartBoot, 404, 404, 200},
		{controlplane.PartAll, 200, 204, 200},
	} {
		hs := httptest.NewServer(e.srv.HandlerFor(c.parts))
		req, _ := http.NewRequest("GET", hs.URL+"/1.0/dedicated/server", nil)
		req.Header.Set("Authorization", "Bearer "+cu.token)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		url := e.url
		e.url = hs.URL
		st, _ := a.do("POST", agentapi.InventoryPath("ns1"), inv, nil)
		bst, _ := get(t, e, "/boot/boot.ipxe")
		e.url = url
		hs.Close()
		if resp.StatusCode != c.cust || st != c.ag || bst != c.boot {
			t.Errorf("parts %d: customer %d agent %d boot %d, want %d %d %d", c.parts, resp.StatusCode, st, bst, c.cust, c.ag, c.boot)
		}
	}
}

// FuzzClientIP: any X-Forwarded-For (a client writes what it likes) gives
// the peer, or an address a trusted hop appended; an untrusted peer's
// header is never believed.
func FuzzClientIP(f *testing.F) {
	f.Add("127.0.0.1:4242", "10.0.0.1", "")
	f.Add("127.0.0.1:4242", "203.0.113.9, 10.0.0.1", "10.0.0.0/8")
	f.Add("[::1]:80", "2001:db8::1, ::ffff:10.0.0.2", "")
	f.Add("192.0.2.1:1", "10.0.0.1", "")
	f.Add("127.0.0.1:1", "garbage, 10.0.0.1", "")
	f.Add("127.0.0.1:1", "[fe80::1%eth0]:80", "")
	f.Add("not an address", "10.0.0.1", "")
	proxies := []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128")}
	f.Fuzz(func(t *testing.T, remote, xff, extra string) {
		trusted := append([]netip.Prefix(nil), proxies...)
		if ps, err := controlplane.ParseTrustedProxies(extra); err == nil {
			trusted = append(trusted, ps...)
		}
		got, ok := controlplane.ClientIP(remote, []string{xff}, trusted)
		peer, err := netip.ParseAddrPort(remote)
		if err != nil {
			return
		}
		if !ok {
			t.Fatalf("%q: not ok", remote)
		}
		p := peer.Addr().Unmap()
		trustedPeer := false
		for _, pr := range trusted {
			trustedPeer = trustedPeer || pr.Contains(p)
		}
		if !trustedPeer {
			if got != p {
				t.Fatalf("untrusted peer %s: got %s from %q", p, got, xff)
			}
			return
		}
		if got != p && !strings.Contains(xff, strings.TrimPrefix(got.String(), "::ffff:")) && !strings.Contains(strings.ToLower(xff), got.String()) {
			t.Fatalf("%s: neither the peer nor in %q", got, xff)
		}
	})
}

// TestBootRearmedByReboot: a reboot request while the server boots
// rescue arms it (store.ArmedReboot): its live agent's rescue goes away,
// so the next script mints a new token; before the request it did not.
func TestBootRearmedByReboot(t *testing.T) {
	bothStores(t, func(t *testing.T, backend envOpt) {
		e := newEnv(t, withNetboot(t), backend)
		cu := e.customer("acme")
		const mac = "52:54:00:12:34:56"
		if _, err := e.admin.AddServer(context.Background(), "ns1", "acme", mac); err != nil {
			t.Fatal(err)
		}
		a := &agent{e: e, server: "ns1", token: rescueToken(t, e, mac, "ns1")}
		a.inventory(inv)
		noToken(t, e, mac) // the agent is live
		if err := cu.signed.Post(path("ns1", "/reboot"), nil, nil); err != nil {
			t.Fatal(err)
		}
		tok := rescueToken(t, e, mac, "ns1")
		if st, _ := a.do("GET", agentapi.JobPath("ns1"), nil, nil); st != 401 {
			t.Fatalf("the rebooted rescue's token: %d, want 401", st)
		}
		a.token = tok
		a.inventory(inv)
		noToken(t, e, mac)
	})
}
