package controlplane

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/byoi/byoi/agentapi"
	"github.com/byoi/byoi/controlplane/netboot"
	"github.com/byoi/byoi/controlplane/store"
	"github.com/byoi/byoi/job"
)

// Network boot: what iPXE fetches, over plain HTTP and without
// authentication (the ROMs have no HTTPS and cannot sign):
//
//	GET /boot/boot.ipxe              the script every server's DHCP answer names: chains the next one by MAC
//	GET /boot/mac/{aa-bb-..}.ipxe    the server's script, by a MAC address registered for it:
//	                                 boot rescue, when store.MayMint says so → the rescue system with a
//	                                 new agent token (handed out once);
//	                                 boot harddisk → the local disk (netboot.DiskScript), which revokes the
//	                                 token of the deployment it boots;
//	                                 anything else (a MAC no server has, a server not expecting a rescue
//	                                 boot, any HEAD) → netboot.NoTokenScript, the same bytes for all
//	GET /boot/rescue/vmlinuz, /boot/rescue/initrd.img   the rescue system (--rescue-dir)
//	GET /boot/bootsel/{mbr|gpt}-{hex}.bin               bootsel with that disk key
//
// A server's script is served only by a MAC the operator registered for it
// (byoi-api server add --mac, server macs): the MACs its agent reports in
// its inventory are never trusted for this, since a server whose token
// leaked could otherwise claim another server's MAC and have that server
// run its jobs. There is no script by server name: names are not secret.
// Every /boot request is rate-limited per source address (ratelimit.go).

// NetbootConfig enables network boot (Config.Netboot).
type NetbootConfig struct {
	// RescueDir holds the rescue system: vmlinuz and initrd.img.
	RescueDir string
	// BootURL is where iPXE reaches this server (plain HTTP, no trailing
	// slash), e.g. http://10.0.2.2:8080.
	BootURL string
	// AgentURL is where the rescue agent reaches this server's agent API
	// (byoi.url=); BootURL when empty. It may be HTTPS.
	AgentURL string
	// Cmdline is added to the rescue kernel's command line (console=...).
	Cmdline string
	// RatePerMinute and Burst limit /boot requests per source address
	// (defaults DefaultBootRatePerMinute, DefaultBootBurst; RatePerMinute
	// < 0: no limit).
	RatePerMinute, Burst int
	// TrustedProxies are the proxies whose X-Forwarded-For names the
	// source address (ClientIP); none: the connection's peer is.
	TrustedProxies []netip.Prefix
}

// Check validates c: the URLs go into iPXE scripts and a kernel command
// line as they are, and the rescue files must be there.
func (c NetbootConfig) Check() error {
	if !netboot.SafeURL(c.BootURL) || !strings.HasPrefix(c.BootURL, "http://") {
		return fmt.Errorf("the boot URL %q must be http://host[:port][/path] without spaces, quotes or '$' (the iPXE ROMs have no HTTPS)", c.BootURL)
	}
	if c.AgentURL != "" && !netboot.SafeURL(c.AgentURL) {
		return fmt.Errorf("the agent URL %q must be http(s)://... without spaces, quotes or '$'", c.AgentURL)
	}
	for _, r := range c.Cmdline {
		if r < ' ' || r > '~' || strings.ContainsRune(`"'$\`+"`", r) {
			return fmt.Errorf("the rescue kernel command line may hold printable ASCII without quotes, '$' or '\\'")
		}
	}
	for _, w := range strings.Fields(c.Cmdline) {
		if strings.HasPrefix(w, "byoi.") || strings.HasPrefix(w, "BOOTIF=") || strings.HasPrefix(w, "initrd=") {
			return fmt.Errorf("the rescue kernel command line must not set %s: byoi-api does", strings.SplitN(w, "=", 2)[0])
		}
	}
	for _, f := range rescueFiles {
		st, err := os.Stat(filepath.Join(c.RescueDir, f))
		if err != nil || !st.Mode().IsRegular() || st.Size() == 0 {
			return fmt.Errorf("the rescue directory %q must hold %s and %s (scripts/build-rescue.sh builds them)", c.RescueDir, rescueFiles[0], rescueFiles[1])
		}
	}
	return nil
}

var rescueFiles = [2]string{"vmlinuz", "initrd.img"}

func (s *Server) netbootRoutes() {
	a := agentapi.Prefix + "/servers/{server}"
	s.handle(a+"/boot", map[string]endpoint{"POST": {auth: authAgent, h: s.agentBoot}})
	if s.cfg.Netboot == nil {
		return
	}
	s.mux.HandleFunc("GET /boot/boot.ipxe", s.logged(s.bootChain))
	s.mux.HandleFunc("GET /boot/mac/{file}", s.logged(s.bootMAC))
	s.mux.HandleFunc("GET /boot/rescue/{file}", s.logged(s.bootRescueFile))
	s.mux.HandleFunc("GET /boot/bootsel/{file}", s.logged(s.bootsel))
	s.mux.HandleFunc("/boot/", s.logged(func(w http.ResponseWriter, r *http.Request) string {
		http.Error(w, "not found", http.StatusNotFound)
		return "netboot"
	}))
}

// statusWriter remembers the status of an answer, for the request log.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

// logged rate-limits a network boot request by its source address, and
// logs it like every other (path only: no query; the answers are never
// logged, a rescue script holds a token).
func (s *Server) logged(h func(w http.ResponseWriter, r *http.Request) string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		sw := &statusWriter{ResponseWriter: w}
		who := "netboot"
		src, _ := ClientIP(r.RemoteAddr, r.Header.Values("X-Forwarded-For"), s.limit.trusted)
		if ok, wait := s.limit.allow(src, s.cfg.Clock.Now()); ok {
			who = h(sw, r)
		} else {
			secs := max(1, int(math.Ceil(wait.Seconds())))
			sw.Header().Set("Retry-After", strconv.Itoa(secs))
			http.Error(sw, job.Text(job.APIBootRateLimited, secs), http.StatusTooManyRequests)
			s.log.Warn("network boot: rate limited", "source", src.String(), "path", r.URL.Path)
		}
		s.log.Info("request", "qid", w.Header().Get("X-Ovh-QueryID"), "method", r.Method, "path", r.URL.Path, "status", sw.status, "who", who, "ms", time.Since(start).Milliseconds())
	}
}

func writeScript(w http.ResponseWriter, script string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.Write([]byte(script))
}

func (s *Server) bootChain(w http.ResponseWriter, r *http.Request) string {
	writeScript(w, netboot.ChainScript(s.cfg.Netboot.BootURL))
	return "netboot"
}

func (s *Server) bootMAC(w http.ResponseWriter, r *http.Request) string {
	text, ok := strings.CutSuffix(r.PathValue("file"), ".ipxe")
	mac, err := agentapi.NormalizeMAC(text)
	if !ok || err != nil {
		http.Error(w, "not a MAC address: /boot/mac/aa-bb-cc-dd-ee-ff.ipxe", http.StatusNotFound)
		return "netboot"
	}
	if r.Method == http.MethodHead {
		// Never mints, never revokes, tells nothing.
		writeScript(w, s.noTokenScript())
		return "netboot"
	}
	script, who, err := s.serverScript(r.Context(), mac)
	if err != nil {
		s.log.Error("network boot script failed", "mac", mac, "err", err)
		http.Error(w, "internal server error", http.StatusInternalServerError)
		return who
	}
	writeScript(w, script)
	return who
}

func (s *Server) noTokenScript() string {
	return netboot.NoTokenScript(s.cfg.Netboot.BootURL, s.cfg.Netboot.Cmdline)
}

// serverScript is the iPXE script for the server mac identifies (a GET):
// its local disk (boot harddisk), the rescue with a new agent token when
// store.MayMint says so, else the script without a token that every
// unknown MAC gets too.
func (s *Server) serverScript(ctx context.Context, mac string) (script, who string, err error) {
	nb := s.cfg.Netboot
	sv, err := s.st.ServerByMAC(ctx, mac)
	if errors.Is(err, store.ErrNotFound) {
		s.log.Warn("network boot of an unknown MAC address", "mac", mac)
		return s.noTokenScript(), "netboot", nil
	}
	if err != nil {
		return "", "netboot", err
	}
	who = "netboot " + sv.Name
	s.bootSeen(ctx, sv, "network boot") // issue 24
	if sv.BootID == store.BootHarddisk {
		key, d := s.diskKey(ctx, sv)
		if d != nil {
			// The deployment is done and its agent said how the disk
			// boots, its last word: the token it had ends now.
			revoked, err := s.st.RevokeBootToken(ctx, sv.ID, d.EndedAt)
			if err != nil {
				return "", who, err
			}
			if revoked {
				s.log.Info("network boot: the agent token of the booted deployment is revoked", "server", sv.Name, "deployment", d.ID)
			}
		}
		s.log.Info("network boot: local disk", "server", sv.Name, "mac", mac, "diskKey", keyText(key))
		return netboot.DiskScript(nb.BootURL, key), who, nil
	}
	// The token travels in clear HTTP in this script: it is handed out
	// once, when the server is expected to boot its rescue, and never
	// while the agent of the current one is alive.
	tok := randomToken("byoi_ag_")
	minted, err := s.st.MintBootToken(ctx, store.BootMint{ServerID: sv.ID, TokenHash: hashToken(tok), Now: s.cfg.Clock.Now(), Silence: 3 * s.cfg.AgentHeartbeat, Grace: s.cfg.TokenGrace})
	if err != nil {
		return "", who, err
	}
	if !minted {
		s.log.Warn("network boot: rescue without an agent token (the server was not expecting a rescue boot, or its agent is alive)", "server", sv.Name, "mac", mac)
		return s.noTokenScript(), who, nil
	}
	agentURL := nb.AgentURL
	if agentURL == "" {
		agentURL = nb.BootURL
	}
	s.log.Info("network boot: rescue, new agent token", "server", sv.Name, "mac", mac)
	return netboot.RescueScript(netboot.Rescue{BootURL: nb.BootURL, AgentURL: agentURL, Server: sv.Name, MAC: mac, Token: tok, Cmdline: nb.Cmdline}), who, nil
}

// diskKey is the deployed disk's key for bootsel: the one the agent
// reported for the server's current deployment, when that is done (d, the
// deployment, is set then, key or not). A key of an earlier deployment is
// never used: it may name another disk.
func (s *Server) diskKey(ctx context.Context, sv store.Server) (*netboot.DiskKey, *store.Deployment) {
	bi, err := s.st.BootInfo(ctx, sv.ID)
	if err != nil {
		return nil, nil
	}
	d, err := s.st.CurrentDeployment(ctx, sv.ID)
	if err != nil || d.ID != bi.DeploymentID || d.Status != store.StatusDone {
		return nil, nil
	}
	k, err := netboot.ParseDiskKey(bi.DiskKey)
	if err != nil {
		return nil, &d
	}
	return &k, &d
}

func keyText(k *netboot.DiskKey) string {
	if k == nil {
		return "none"
	}
	return k.String()
}

func (s *Server) bootRescueFile(w http.ResponseWriter, r *http.Request) string {
	name := r.PathValue("file")
	if name != rescueFiles[0] && name != rescueFiles[1] {
		http.Error(w, "not found", http.StatusNotFound)
		return "netboot"
	}
	http.ServeFile(w, r, filepath.Join(s.cfg.Netboot.RescueDir, name))
	return "netboot"
}

func (s *Server) bootsel(w http.ResponseWriter, r *http.Request) string {
	text, ok := strings.CutSuffix(r.PathValue("file"), ".bin")
	k, err := netboot.ParseDiskKey(strings.Replace(text, "-", ":", 1))
	if !ok || err != nil {
		http.Error(w, "not a disk key: /boot/bootsel/{mbr-<8 hex>|gpt-<32 hex>}.bin", http.StatusNotFound)
		return "netboot"
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Write(netboot.Bootsel(k))
	return "netboot"
}

// agentBoot stores how the server boots the disk a done deployment wrote
// (agentapi.BootInfo), posted by the agent before it reboots.
func (s *Server) agentBoot(c *call) (int, any, error) {
	var b agentapi.BootInfo
	if err := decodeStrict(c.body, &b); err != nil {
		return 0, nil, fail(kBadRequest, job.APIBadRequest, err.Error())
	}
	if err := b.Validate(); err != nil {
		return 0, nil, fail(kBadRequest, job.APIBadRequest, err.Error())
	}
	d, err := s.st.Deployment(c.r.Context(), c.server.ID, b.DeploymentID)
	if err != nil {
		return 0, nil, agentErr(err, b.DeploymentID)
	}
	if d.Status != store.StatusDone || d.Cleared {
		return 0, nil, fail(kGone, job.APIDeploymentGone, b.DeploymentID)
	}
	if err := s.st.SetBootInfo(c.r.Context(), store.BootInfo{ServerID: c.server.ID, DeploymentID: b.DeploymentID, DiskKey: b.DiskKey, EFIEntry: b.EFIEntry, UpdatedAt: s.cfg.Clock.Now()}); err != nil {
		return 0, nil, err
	}
	s.log.Info("boot info", "server", c.server.Name, "deployment", b.DeploymentID, "diskKey", b.DiskKey, "efiEntry", b.EFIEntry)
	return http.StatusNoContent, nil, nil
}
