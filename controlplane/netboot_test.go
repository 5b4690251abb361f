package controlplane_test

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/byoi/byoi/agentapi"
	"github.com/byoi/byoi/controlplane"
	"github.com/byoi/byoi/controlplane/netboot"
	"github.com/byoi/byoi/controlplane/store/sqlitestore"
	"github.com/byoi/byoi/job"
)

const bootURL = "http://10.0.2.2:8080"

// withNetboot serves network boot with a rescue directory holding dummy
// vmlinuz and initrd.img.
func withNetboot(t *testing.T) envOpt {
	dir := t.TempDir()
	for name, data := range map[string]string{"vmlinuz": "KERNEL-0123456789", "initrd.img": "INITRD"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return func(ec *envConfig) {
		c := &ec.Config
		c.Netboot = &controlplane.NetbootConfig{RescueDir: dir, BootURL: bootURL + "/", Cmdline: "console=ttyS0,115200"}
	}
}

// withNetbootRate serves network boot limited to perMinute requests a
// minute per source, bursts of burst.
func withNetbootRate(t *testing.T, perMinute, burst int) envOpt {
	nb := withNetboot(t)
	return func(ec *envConfig) {
		nb(ec)
		ec.Netboot.RatePerMinute, ec.Netboot.Burst = perMinute, burst
	}
}

// get is an unauthenticated GET (what iPXE sends).
func get(t *testing.T, e *env, p string, hdr ...string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest("GET", e.url+p, nil)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

var tokenRE = regexp.MustCompile(`byoi\.token=(\S+)`)

// rescueToken fetches the server's script by mac, checks it boots the
// rescue system and returns the agent token in it.
func rescueToken(t *testing.T, e *env, mac, server string) string {
	t.Helper()
	st, body := get(t, e, "/boot/mac/"+strings.ReplaceAll(mac, ":", "-")+".ipxe")
	want := "#!ipxe\necho byoi: server " + server + ": booting the rescue system\n" +
		"kernel " + bootURL + "/boot/rescue/vmlinuz initrd=initrd.img quiet console=ttyS0,115200 BOOTIF=01-" + strings.ReplaceAll(mac, ":", "-") +
		" byoi.url=" + bootURL + " byoi.server=" + server + " byoi.token="
	if st != 200 || !strings.HasPrefix(body, want) || !strings.HasSuffix(body, "\ninitrd "+bootURL+"/boot/rescue/initrd.img\nboot\n") {
		t.Fatalf("rescue script: %d\n%s\nwant the prefix\n%s", st, body, want)
	}
	m := tokenRE.FindStringSubmatch(body)
	e.secret(m[1])
	return m[1]
}

func diskScript(t *testing.T, e *env, mac string) string {
	t.Helper()
	st, body := get(t, e, "/boot/mac/"+strings.ReplaceAll(mac, ":", "-")+".ipxe")
	if st != 200 || !strings.Contains(body, ": booting its local disk\n") || strings.Contains(body, "token") {
		t.Fatalf("disk script: %d\n%s", st, body)
	}
	return body
}

// done drives a new legacy deployment of a to done with the simulated agent.
func done(t *testing.T, cu *customer, a *agent) int64 {
	t.Helper()
	if err := cu.bearer.Post(path(a.server, "/bringYourOwnImage"), legacyBody(), nil); err != nil {
		t.Fatal(err)
	}
	as := a.pickUp()
	if ack := a.mustSend(a.event("done", job.StepFinish, job.KindInfo, job.MsgDone, job.Text(job.MsgDone), 0, 0)); !ack.Done {
		t.Fatalf("ack %+v", ack)
	}
	return as.DeploymentID
}

func postBoot(a *agent, b agentapi.BootInfo) (int, agentapi.Error) {
	return a.do("POST", agentapi.BootPath(a.server), b, nil)
}

// TestNetbootFlow: a server's script by its registered MAC through a
// deployment's life: rescue with a token handed out once (a second fetch
// gets the script without one, and the first token keeps working), the
// local disk once done (bootsel with the key its agent reported, for that
// deployment only; the disk script revokes the deployment's token once the
// agent reported), rescue with a new token after DELETE or PUT bootId 2.
func TestNetbootFlow(t *testing.T) {
	e := newEnv(t, withNetboot(t))
	cu := e.customer("acme")
	const mac = "52:54:00:12:34:56"
	a := &agent{e: e, server: "ns1"}
	tok0, err := e.admin.AddServer(context.Background(), "ns1", "acme", "52-54-00-12-34-56")
	if err != nil {
		t.Fatal(err)
	}
	e.secret(tok0)

	// The DHCP boot file chains the server's script by MAC.
	if st, body := get(t, e, "/boot/boot.ipxe"); st != 200 || body != netboot.ChainScript(bootURL) {
		t.Fatalf("boot.ipxe: %d %q", st, body)
	}
	// Rescue: a new server is armed; its first script mints a token,
	// which replaces the admin's.
	tok1 := rescueToken(t, e, mac, "ns1")
	a.token = tok0
	if st, _ := a.do("POST", agentapi.InventoryPath("ns1"), inv, nil); st != 401 {
		t.Fatalf("the admin's token after a rescue script: %d, want 401", st)
	}
	a.token = tok1
	a.inventory(inv)
	// Once: a second fetch gets no token, and the first one still works.
	noToken(t, e, strings.ToUpper(mac))
	a.inventory(inv)

	// Done: the local disk. Before the agent reported its disk: exit,
	// and its token still works (it has its boot info to post).
	id := done(t, cu, a)
	if body := diskScript(t, e, mac); strings.Contains(body, "chain") || strings.Contains(body, "ns1") {
		t.Fatalf("a disk script without a key chains or names the server:\n%s", body)
	}
	// Refused boot infos.
	if st, ae := postBoot(a, agentapi.BootInfo{DeploymentID: id, DiskKey: "gpt:XYZ"}); st != 400 {
		t.Fatalf("bad key: %d %+v", st, ae)
	}
	if st, _ := postBoot(a, agentapi.BootInfo{DeploymentID: id + 100, DiskKey: "mbr:1a2b3c4d"}); st != 404 {
		t.Fatalf("no such deployment: %d", st)
	}
	const key = "gpt:efbeadde0000c0ffee00112233445566"
	if st, ae := postBoot(a, agentapi.BootInfo{DeploymentID: id, DiskKey: key, EFIEntry: `Boot000B \EFI\debian\grubx64.efi`}); st != 204 {
		t.Fatalf("boot info: %d %+v", st, ae)
	}
	body := diskScript(t, e, mac)
	want := "iseq ${platform} pcbios || exit\nchain " + bootURL + "/boot/bootsel/gpt-efbeadde0000c0ffee00112233445566.bin || exit\nexit\n"
	if !strings.HasSuffix(body, want) {
		t.Fatalf("disk script:\n%s\nwant the end\n%s", body, want)
	}
	// bootsel with that key.
	st, bin := get(t, e, "/boot/bootsel/gpt-efbeadde0000c0ffee00112233445566.bin")
	k, _ := netboot.ParseDiskKey(key)
	if st != 200 || !bytes.Equal([]byte(bin), netboot.Bootsel(k)) {
		t.Fatalf("bootsel: %d %d bytes", st, len(bin))
	}
	// The disk script of the reported deployment revoked its token.
	if st, _ := a.do("POST", agentapi.InventoryPath("ns1"), inv, nil); st != 401 {
		t.Fatalf("the token after the disk script: %d, want 401", st)
	}

	// DELETE: rescue again with a new token, and a boot info for the
	// cleared deployment is refused.
	if err := cu.signed.Delete(path("ns1", "/bringYourOwnImage"), nil); err != nil {
		t.Fatal(err)
	}
	a.token = rescueToken(t, e, mac, "ns1")
	if st, _ := postBoot(a, agentapi.BootInfo{DeploymentID: id, DiskKey: key}); st != 410 {
		t.Fatalf("boot info of a cleared deployment: %d, want 410", st)
	}

	// A second deployment done: the first one's key is not used.
	id2 := done(t, cu, a)
	if body := diskScript(t, e, mac); strings.Contains(body, "chain") {
		t.Fatalf("the previous deployment's key is used:\n%s", body)
	}
	if st, _ := postBoot(a, agentapi.BootInfo{DeploymentID: id2, DiskKey: "mbr:1a2b3c4d"}); st != 204 {
		t.Fatal(st)
	}
	if body := diskScript(t, e, mac); !strings.Contains(body, "/boot/bootsel/mbr-1a2b3c4d.bin || exit\n") {
		t.Fatalf("disk script:\n%s", body)
	}
	// PUT bootId 2 (rescue): rescue again.
	if err := cu.signed.Put(path("ns1", ""), map[string]any{"bootId": 2}, nil); err != nil {
		t.Fatal(err)
	}
	a.token = rescueToken(t, e, mac, "ns1")
	a.inventory(inv)

	// A deployment that is not done yet takes no boot info.
	if err := cu.signed.Post(path("ns1", "/bringYourOwnImage"), legacyBody(), nil); err != nil {
		t.Fatal(err)
	}
	as := a.pickUp()
	if st, _ := postBoot(a, agentapi.BootInfo{DeploymentID: as.DeploymentID, DiskKey: key}); st != 410 {
		t.Fatalf("boot info of a running deployment: %d, want 410", st)
	}
	// Another server's agent cannot post this server's boot info.
	b := e.server("ns2", "acme")
	b.server = "ns1"
	if st, _ := postBoot(b, agentapi.BootInfo{DeploymentID: id2, DiskKey: key}); st != 403 {
		t.Fatalf("another server's agent: %d, want 403", st)
	}
	logs := e.logs.String()
	if !strings.Contains(logs, `msg="network boot: rescue, new agent token" server=ns1 mac=52:54:00:12:34:56`) ||
		!strings.Contains(logs, `msg="network boot: local disk" server=ns1 mac=52:54:00:12:34:56 diskKey=gpt:efbeadde0000c0ffee00112233445566`) {
		t.Errorf("the network boot log lines are missing:\n%s", logs)
	}
}

// noToken fetches mac's script and checks it is the one without a token
// (the same bytes for every MAC).
func noToken(t *testing.T, e *env, mac string) {
	t.Helper()
	st, body := get(t, e, "/boot/mac/"+strings.ReplaceAll(mac, ":", "-")+".ipxe")
	if want := netboot.NoTokenScript(bootURL, "console=ttyS0,115200"); st != 200 || body != want {
		t.Fatalf("script of %s: %d\n%s\nwant the one without a token:\n%s", mac, st, body, want)
	}
}

// TestNetbootMACs: only MACs the operator registered identify a server;
// those an agent reports in its inventory do not; a MAC belongs to one
// server.
func TestNetbootMACs(t *testing.T) {
	e := newEnv(t, withNetboot(t))
	e.customer("acme")
	ctx := context.Background()
	a := e.server("ns1", "acme")       // no MAC
	a.inventory(inv)                   // reports 52:54:00:12:34:56
	noToken(t, e, "52:54:00:12:34:56") // a MAC only the inventory reported
	for _, p := range []string{"/boot/mac/52-54-00-12-34.ipxe", "/boot/mac/52-54-00-12-34-56", "/boot/mac/zz-54-00-12-34-56.ipxe", "/boot/mac/ns1.ipxe",
		"/boot/rescue/other", "/boot/rescue/..%2fbyoi.db", "/boot/bootsel/mbr-00000000.bin", "/boot/bootsel/gpt-12.bin", "/boot/ns1.ipxe"} {
		if st, _ := get(t, e, p); st != 404 {
			t.Errorf("GET %s: %d, want 404", p, st)
		}
	}
	if _, err := e.admin.AddServerMACs(ctx, "ns2", "acme", []string{"52:54:00:00:00:01", "52:54:00:00:00:02", "52-54-00-00-00-01"}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.admin.AddServer(ctx, "ns3", "acme", "52:54:00:00:00:02"); err == nil || !strings.Contains(err.Error(), "belongs to server ns2") {
		t.Fatalf("a MAC of another server: %v", err)
	}
	if err := e.admin.SetMACs(ctx, "ns1", []string{"52:54:00:00:00:01"}); err == nil {
		t.Fatal("SetMACs took another server's MAC")
	}
	if _, err := e.admin.AddServer(ctx, "ns4", "acme", "not-a-mac"); err == nil {
		t.Fatal("a bad MAC was taken")
	}
	rescueToken(t, e, "52:54:00:00:00:02", "ns2")
	if err := e.admin.SetMACs(ctx, "ns2", nil); err != nil {
		t.Fatal(err)
	}
	if err := e.admin.SetMACs(ctx, "ns1", []string{"52:54:00:00:00:02"}); err != nil {
		t.Fatal(err)
	}
	// ns1's agent (the operator's token) posted its inventory: it is
	// alive, and its token is not taken until it has been silent for 3
	// heartbeats.
	noToken(t, e, "52:54:00:00:00:02")
	e.clock.Advance(91 * time.Second)
	rescueToken(t, e, "52:54:00:00:00:02", "ns1")
	noToken(t, e, "52:54:00:00:00:01") // a MAC removed
}

// TestNetbootRescueFiles: the rescue kernel and initramfs, with HEAD and
// ranges (iPXE and curl use them); nothing else of the directory.
func TestNetbootRescueFiles(t *testing.T) {
	e := newEnv(t, withNetboot(t))
	if st, body := get(t, e, "/boot/rescue/vmlinuz"); st != 200 || body != "KERNEL-0123456789" {
		t.Fatalf("vmlinuz: %d %q", st, body)
	}
	if st, body := get(t, e, "/boot/rescue/vmlinuz", "Range", "bytes=7-9"); st != 206 || body != "012" {
		t.Fatalf("vmlinuz range: %d %q", st, body)
	}
	if st, body := get(t, e, "/boot/rescue/initrd.img"); st != 200 || body != "INITRD" {
		t.Fatalf("initrd.img: %d %q", st, body)
	}
	resp, err := http.Head(e.url + "/boot/rescue/initrd.img")
	if err != nil || resp.StatusCode != 200 || resp.ContentLength != 6 {
		t.Fatalf("HEAD: %v %v", resp, err)
	}
}

// TestNetbootOff: without a rescue directory nothing is served under
// /boot, and the agent's boot endpoint still works.
func TestNetbootOff(t *testing.T) {
	e := newEnv(t)
	if st, _ := get(t, e, "/boot/boot.ipxe"); st != 404 {
		t.Fatalf("boot.ipxe without netboot: %d", st)
	}
}

func TestNetbootConfig(t *testing.T) {
	dir := t.TempDir()
	st, err := sqlitestore.Open(context.Background(), filepath.Join(dir, "byoi.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	keys, err := controlplane.LoadOrCreateKey(filepath.Join(dir, "key"))
	if err != nil {
		t.Fatal(err)
	}
	rescue := t.TempDir()
	os.WriteFile(filepath.Join(rescue, "vmlinuz"), []byte("k"), 0o644)
	os.WriteFile(filepath.Join(rescue, "initrd.img"), []byte("i"), 0o644)
	for _, c := range []struct {
		nb controlplane.NetbootConfig
		ok bool
	}{
		{controlplane.NetbootConfig{RescueDir: rescue, BootURL: "http://10.0.2.2:8080"}, true},
		{controlplane.NetbootConfig{RescueDir: rescue, BootURL: "http://10.0.2.2:8080", AgentURL: "https://api.example/byoi", Cmdline: "console=ttyS1,115200n8 nomodeset"}, true},
		{controlplane.NetbootConfig{RescueDir: rescue, BootURL: "https://10.0.2.2:8080"}, false},
		{controlplane.NetbootConfig{RescueDir: rescue, BootURL: ""}, false},
		{controlplane.NetbootConfig{RescueDir: rescue, BootURL: "http://x/${net0/mac}"}, false},
		{controlplane.NetbootConfig{RescueDir: rescue, BootURL: "http://x", AgentURL: "http://a b"}, false},
		{controlplane.NetbootConfig{RescueDir: rescue, BootURL: "http://x", Cmdline: "byoi.token=x"}, false},
		{controlplane.NetbootConfig{RescueDir: rescue, BootURL: "http://x", Cmdline: "console=$x"}, false},
		{controlplane.NetbootConfig{RescueDir: t.TempDir(), BootURL: "http://x"}, false},
	} {
		nb := c.nb
		_, err := controlplane.New(controlplane.Config{Store: st, Keys: keys, Netboot: &nb})
		if (err == nil) != c.ok {
			t.Errorf("%+v: %v", c.nb, err)
		}
	}
}
