package e2e

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/byoi/byoi/internal/testutil"
	"github.com/byoi/byoi/job"
)

// OVH's Node.js client, npm ovh 2.0.3 as published, drives byoi-api (issue
// 24): over HTTPS (the client speaks nothing else) on a port that is not
// 443 (the client signs the URL without the port), with its apis option
// (it loads byoi-api's schema documents and warns about any call they do
// not list), through a reinstall a real `byoi agent` deploys, task
// polling, install/status, the boot lists, a reboot and OVH's errors.

// nodeOVHVersion is the client the test installs.
const nodeOVHVersion = "2.0.3"

// nodeOVH installs ovh@2.0.3 from npm's registry once into a cache shared
// by runs (/var/cache/byoi-npm, or the user cache dir), atomically: npm
// installs into a temporary directory renamed into place. It returns the
// node_modules directory.
func nodeOVH(t *testing.T) string {
	t.Helper()
	testutil.RequireCommand(t, "node", "npm")
	base := "/var/cache/byoi-npm"
	if err := os.MkdirAll(base, 0o755); err != nil {
		dir, _ := os.UserCacheDir()
		base = filepath.Join(dir, "byoi-npm")
		if err := os.MkdirAll(base, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	final := filepath.Join(base, "ovh-"+nodeOVHVersion)
	pkg := filepath.Join(final, "node_modules", "ovh", "package.json")
	if !installedVersion(pkg) {
		tmp, err := os.MkdirTemp(base, "tmp-")
		if err != nil {
			t.Fatal(err)
		}
		defer os.RemoveAll(tmp)
		cmd := exec.Command("npm", "install", "--prefix", tmp, "--no-audit", "--no-fund", "--no-save", "--no-package-lock", "ovh@"+nodeOVHVersion)
		cmd.Env = append(os.Environ(), "npm_config_cache="+filepath.Join(base, "npm-cache"), "npm_config_update_notifier=false")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("npm install ovh@%s: %v\n%s", nodeOVHVersion, err, out)
		}
		if !installedVersion(filepath.Join(tmp, "node_modules", "ovh", "package.json")) {
			t.Fatalf("npm installed another ovh than %s", nodeOVHVersion)
		}
		if err := os.Rename(tmp, final); err != nil && !installedVersion(pkg) {
			t.Fatal(err) // another run may have won the rename: then it is there
		}
	}
	return filepath.Join(final, "node_modules")
}

func installedVersion(pkg string) bool {
	data, err := os.ReadFile(pkg)
	if err != nil {
		return false
	}
	var p struct{ Name, Version string }
	return json.Unmarshal(data, &p) == nil && p.Name == "ovh" && p.Version == nodeOVHVersion
}

// testCA writes a CA and a certificate for 127.0.0.1 signed by it; it
// returns the CA's, the certificate's and the key's PEM files.
func testCA(t *testing.T) (caFile, certFile, keyFile string) {
	t.Helper()
	dir := t.TempDir()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ca := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "byoi e2e CA"}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(24 * time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, ca, ca, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	leaf := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "127.0.0.1"}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(24 * time.Hour), IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		KeyUsage: x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, leaf, caCert, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	kder, _ := x509.MarshalECPrivateKey(key)
	write := func(name, typ string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: b}), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	return write("ca.pem", "CERTIFICATE", caDER), write("cert.pem", "CERTIFICATE", der), write("key.pem", "EC PRIVATE KEY", kder)
}

// tlsAPI is byoi-api over HTTPS on 127.0.0.1 and a port that is not 443.
type tlsAPI struct {
	*api
	ca string
}

func newTLSAPI(t *testing.T, extra ...string) *tlsAPI {
	t.Helper()
	build(t)
	ca, cert, key := testCA(t)
	a := &api{t: t, db: filepath.Join(t.TempDir(), "byoi.db"), port: freePort(t)}
	a.url = "https://127.0.0.1:" + strconv.Itoa(a.port)
	args := append([]string{"serve", "--db", a.db, "--listen", "127.0.0.1:" + strconv.Itoa(a.port), "--tls-cert", cert, "--tls-key", key, "-v"}, extra...)
	a.proc = start(t, bins.byoiAPI, args...)
	a.logs = append(a.logs, a.proc.out)
	pool := x509.NewCertPool()
	pem, _ := os.ReadFile(ca)
	pool.AppendCertsFromPEM(pem)
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}, Timeout: 2 * time.Second}
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if resp, err := hc.Get(a.url + "/1.0/auth/time"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return &tlsAPI{api: a, ca: ca}
			}
		}
	}
	t.Fatalf("byoi-api over TLS did not answer:\n%s", a.proc.out.String())
	return nil
}

// agentTLS starts `byoi agent` against the TLS listener.
func (a *tlsAPI) agentTLS(server, token, disk string, extra ...string) *proc {
	a.t.Helper()
	args := append([]string{"agent", "--url", a.url, "--server", server, "--token", token, "--disk", disk, "--ca-cert", a.ca,
		"--no-reboot", "--report-interval", "200ms", "--heartbeat", "1s", "--memory-reserve", "0", "-v", "--cmdline", "/dev/null"}, extra...)
	return start(a.t, bins.byoi, args...)
}

// node runs a script with OVH's client on NODE_PATH and the test CA
// trusted, and calls line for each line it prints.
func (a *tlsAPI) node(t *testing.T, modules, script string, env []string, line func(string)) (int, string) {
	t.Helper()
	cmd := exec.Command("node", script)
	cmd.Env = append(os.Environ(), append(env, "NODE_PATH="+modules, "NODE_EXTRA_CA_CERTS="+a.ca)...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr lockedBuffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var all strings.Builder
	sc := bufio.NewScanner(stdout)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for sc.Scan() {
			all.WriteString(sc.Text() + "\n")
			if line != nil {
				line(sc.Text())
			}
		}
	}()
	timer := time.AfterFunc(4*time.Minute, func() { cmd.Process.Kill() })
	defer timer.Stop()
	<-done
	err = cmd.Wait()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return code, all.String() + stderr.String()
}

func TestNodeOVHClient(t *testing.T) {
	t.Parallel()
	modules := nodeOVH(t)
	facts := filepath.Join(t.TempDir(), "facts.json")
	if err := os.WriteFile(facts, []byte(`{"defaults":{"datacenter":"gra3"},"servers":{"srv1":{"ip":"192.0.2.10"}}}`), 0o644); err != nil {
		t.Fatal(err)
	}
	a := newTLSAPI(t, "--server-facts", facts)
	c := a.addCustomer("acme")
	tok := a.addServer("srv1", "acme")
	img := serveImage(t, 40*mib, true, "")
	disk, _ := target(t, 64*mib)
	ag := a.agentTLS("srv1", tok, disk, "--once")

	cfg, _ := json.Marshal(map[string]any{
		"host": "127.0.0.1", "port": a.port, "appKey": c.appKey, "appSecret": c.appSecret, "consumerKey": c.consumerKey,
		"server": "srv1", "ip": "192.0.2.10", "imageURL": img.url, "checksum": img.sum, "hostname": "web1", "sshKey": sshKey,
		"expect": map[string]string{
			"notFound":         job.Text(job.APINotFound, "serviceName = nosuch"),
			"partitioning":     job.Text(job.StoragePartitioning),
			"invalidSignature": job.Text(job.APIInvalidSig),
			"notAuthed":        job.Text(job.APINotAuthed),
		},
	})
	var mu sync.Mutex
	var second *proc
	var lines []map[string]any
	code, out := a.node(t, modules, "testdata/ovhnode/flow.js", []string{"BYOI_NODE_TEST=" + string(cfg)}, func(l string) {
		var m map[string]any
		if json.Unmarshal([]byte(l), &m) != nil {
			return
		}
		mu.Lock()
		defer mu.Unlock()
		lines = append(lines, m)
		if _, ok := m["reboot"]; ok && second == nil {
			// The server reboots by hand into rescue: its agent starts
			// and reports, which byoi-api takes as the reboot seen.
			second = a.agentTLS("srv1", tok, disk)
		}
	})
	if code != 0 {
		t.Fatalf("node exit %d:\n%s", code, tail(out, 40))
	}
	var last map[string]any
	for _, m := range lines {
		last = m
		if m["reboot"] != nil && m["comment"] != job.Text(job.MsgRebootByHand) {
			t.Errorf("reboot task comment %v", m["comment"])
		}
	}
	if last["rebooted"] == nil || last["comment"] != job.Text(job.MsgRebootSeen) {
		t.Errorf("last line %v", last)
	}
	if w, _ := last["warnings"].([]any); len(w) != 0 {
		t.Errorf("the client warned (its schema check): %v", w)
	}
	for _, want := range []string{`"refused":"another server"`, `"refused":"partitioning"`, `"refused":"wrong secret"`, `"deployed"`} {
		if !strings.Contains(out, want) {
			t.Errorf("no %s in the client's output:\n%s", want, out)
		}
	}
	if code := ag.wait(t, time.Minute); code != 0 {
		t.Errorf("agent exit %d:\n%s", code, tail(ag.out.String(), 30))
	}
	testutil.JudgeDeployedDisk(t, disk, testutil.DeployedWant{Hostname: "web1", SSHKey: sshKey})
	if !strings.Contains(ag.out.String(), "detected qcow2") {
		t.Errorf("the agent did not detect the type:\n%s", tail(ag.out.String(), 30))
	}
	logs := []string{ag.out.String(), out}
	for _, l := range a.logs {
		logs = append(logs, l.String())
	}
	noSecrets(t, logs, tok, c.appSecret, c.consumerKey, c.token)
}

// TestNodeREADMESnippet runs the README's Node.js snippet, with its host,
// port, server and image replaced by the test's.
func TestNodeREADMESnippet(t *testing.T) {
	t.Parallel()
	modules := nodeOVH(t)
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile("(?s)<!-- node snippet -->\n```js\n(.*?)```").FindSubmatch(readme)
	if m == nil {
		t.Fatal("README has no node snippet (<!-- node snippet --> then a js block)")
	}
	a := newTLSAPI(t)
	c := a.addCustomer("acme")
	tok := a.addServer("ns1.example", "acme")
	img := serveImage(t, 40*mib, true, "")
	disk, _ := target(t, 64*mib)
	ag := a.agentTLS("ns1.example", tok, disk, "--once")
	snippet := string(m[1])
	for old, new := range map[string]string{
		"'byoi-api.example.com'": "'127.0.0.1'",
		"port: 8443":             fmt.Sprintf("port: %d", a.port),
		"https://images.example.com/debian-12.qcow2": img.url,
		"10000": "200",
	} {
		if !strings.Contains(snippet, old) {
			t.Fatalf("the snippet has no %q", old)
		}
		snippet = strings.ReplaceAll(snippet, old, new)
	}
	script := filepath.Join(t.TempDir(), "snippet.js")
	if err := os.WriteFile(script, []byte(snippet), 0o644); err != nil {
		t.Fatal(err)
	}
	code, out := a.node(t, modules, script, []string{"OVH_APPLICATION_KEY=" + c.appKey, "OVH_APPLICATION_SECRET=" + c.appSecret, "OVH_CONSUMER_KEY=" + c.consumerKey}, nil)
	if code != 0 || !strings.Contains(out, "done") {
		t.Fatalf("snippet exit %d:\n%s", code, tail(out, 30))
	}
	if code := ag.wait(t, time.Minute); code != 0 {
		t.Errorf("agent exit %d", code)
	}
	testutil.JudgeDeployedDisk(t, disk, testutil.DeployedWant{Hostname: "web1"})
}
