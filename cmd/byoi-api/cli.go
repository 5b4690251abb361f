package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"net/url"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/byoi/byoi/controlplane"
	"github.com/byoi/byoi/controlplane/power"
	"github.com/byoi/byoi/controlplane/store"
	"github.com/byoi/byoi/controlplane/store/open"
	"github.com/byoi/byoi/controlplane/store/pgstore"
)

const usage = `usage:
  byoi-api serve [--db FILE] [--listen ADDR] [--tls-cert FILE --tls-key FILE] [--public-url URL]
                 [--agent-listen ADDR] [--boot-listen ADDR]
                 [--agent-timeout 5m] [--pickup-timeout 1h] [--rescue-timeout 10m] [--max-attempts 3] [--body-memory 256]
                 [--pprof ADDR] [-v]
                 [--rescue-dir DIR --boot-url http://HOST:PORT [--agent-url URL] [--rescue-cmdline ARGS]
                  [--boot-rate 120] [--boot-burst 60] [--boot-trusted-proxy CIDR,...]]
                 [--image-cache DIR [--image-cache-size 50GiB] [--image-cache-per-host 4] [--image-cache-allow CIDR]...]
                 [--metrics-listen ADDR]
  byoi-api customer add NAME
  byoi-api credential add --customer NAME [--expires 720h]
  byoi-api credential list [--customer NAME]
  byoi-api credential revoke ID|APPLICATION_KEY
  byoi-api token add --customer NAME [--expires 720h]
  byoi-api token list [--customer NAME]
  byoi-api token revoke ID
  byoi-api server add NAME --customer NAME [--mac MAC]...
  byoi-api server macs NAME [--mac MAC]...       (replaces the MACs; none: no network boot)
  byoi-api server token NAME
  byoi-api server bmc NAME [--bmc none|ipmi://USER@HOST[:623] [--password-file FILE|- | --password-env VAR]]
                                                 (the power driver; without --bmc: shows it. server add takes
                                                  --bmc too. The password is read from the file, the variable
                                                  or stdin, never from the command line)
Every command takes --db FILE (default byoi.db), --key-file FILE (default FILE.key
beside the database, created 0600 for a new database only) and --json (admin commands).
--db postgres://user@host/db?sslmode=... uses PostgreSQL instead (several
instances may share it; then --key-file is required, the same file on each).`

// run is the CLI, callable from tests: args without the program name.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprintln(stderr, usage)
		return 2
	}
	var err error
	switch cmd := args[0]; {
	case cmd == "serve":
		err = serve(ctx, args[1:], stderr)
	case cmd == "customer" && len(args) > 1 && args[1] == "add":
		err = admin(ctx, args[2:], stdout, 1, func(ctx context.Context, a *controlplane.Admin, f *adminFlags) (any, string, error) {
			name := f.fs.Arg(0)
			if err := a.AddCustomer(ctx, name); err != nil {
				return nil, "", err
			}
			return map[string]string{"customer": name}, "customer " + name + " added", nil
		})
	case cmd == "credential" && len(args) > 1 && args[1] == "add":
		err = admin(ctx, args[2:], stdout, 0, func(ctx context.Context, a *controlplane.Admin, f *adminFlags) (any, string, error) {
			c, err := a.AddCredentialFor(ctx, f.customer, f.expires)
			if err != nil {
				return nil, "", err
			}
			return c, fmt.Sprintf("credentialId      %d\napplicationKey    %s\napplicationSecret %s\nconsumerKey       %s\nexpires           %s\n(the secret and consumer key are shown only now)",
				c.ID, c.ApplicationKey, c.ApplicationSecret, c.ConsumerKey, orNever(c.Expires)), nil
		})
	case cmd == "credential" && len(args) > 1 && args[1] == "list":
		err = admin(ctx, args[2:], stdout, 0, func(ctx context.Context, a *controlplane.Admin, f *adminFlags) (any, string, error) {
			l, err := a.Credentials(ctx, f.customer)
			return l, secretTable(l, true), err
		})
	case cmd == "credential" && len(args) > 1 && args[1] == "revoke":
		err = admin(ctx, args[2:], stdout, 1, func(ctx context.Context, a *controlplane.Admin, f *adminFlags) (any, string, error) {
			id := f.fs.Arg(0)
			if err := a.RevokeCredential(ctx, id); err != nil {
				return nil, "", err
			}
			return map[string]string{"revoked": id}, "credential " + id + " revoked", nil
		})
	case cmd == "token" && len(args) > 1 && args[1] == "add":
		err = admin(ctx, args[2:], stdout, 0, func(ctx context.Context, a *controlplane.Admin, f *adminFlags) (any, string, error) {
			t, id, err := a.AddTokenFor(ctx, f.customer, f.expires)
			if err != nil {
				return nil, "", err
			}
			return map[string]string{"accessToken": t, "id": strconv.FormatInt(id, 10)}, fmt.Sprintf("accessToken %s\nid          %d\n(shown only now)", t, id), nil
		})
	case cmd == "token" && len(args) > 1 && args[1] == "list":
		err = admin(ctx, args[2:], stdout, 0, func(ctx context.Context, a *controlplane.Admin, f *adminFlags) (any, string, error) {
			l, err := a.Tokens(ctx, f.customer)
			return l, secretTable(l, false), err
		})
	case cmd == "token" && len(args) > 1 && args[1] == "revoke":
		err = admin(ctx, args[2:], stdout, 1, func(ctx context.Context, a *controlplane.Admin, f *adminFlags) (any, string, error) {
			id, err := strconv.ParseInt(f.fs.Arg(0), 10, 64)
			if err != nil {
				return nil, "", fmt.Errorf("token revoke takes a token's id (byoi-api token list shows them)")
			}
			if err := a.RevokeToken(ctx, id); err != nil {
				return nil, "", err
			}
			return map[string]int64{"revoked": id}, fmt.Sprintf("access token %d revoked (its Control Panel sessions ended)", id), nil
		})
	case cmd == "server" && len(args) > 1 && args[1] == "add":
		err = admin(ctx, args[2:], stdout, 1, func(ctx context.Context, a *controlplane.Admin, f *adminFlags) (any, string, error) {
			name := f.fs.Arg(0)
			spec, pw, err := bmcFlags(f, false)
			if err != nil {
				return nil, "", err
			}
			t, err := a.AddServerMACs(ctx, name, f.customer, f.macs)
			if err != nil {
				return nil, "", err
			}
			if f.bmc != "" {
				if err := a.SetBMC(ctx, name, spec, pw); err != nil {
					return nil, "", fmt.Errorf("server %s added (agent token %s, shown only now), but its BMC was not set (byoi-api server bmc): %w", name, t, err)
				}
			}
			return map[string]string{"server": name, "agentToken": t, "bmc": spec.String()}, "server     " + name + "\nagentToken " + t + "\nbmc        " + spec.String() + "\n(the token is shown only now)", nil
		})
	case cmd == "server" && len(args) > 1 && args[1] == "macs":
		err = admin(ctx, args[2:], stdout, 1, func(ctx context.Context, a *controlplane.Admin, f *adminFlags) (any, string, error) {
			name := f.fs.Arg(0)
			if err := a.SetMACs(ctx, name, f.macs); err != nil {
				return nil, "", err
			}
			macs := f.macs
			if macs == nil {
				macs = []string{}
			}
			return map[string]any{"server": name, "macs": macs}, "server " + name + ": MAC addresses " + strings.Join(macs, " "), nil
		})
	case cmd == "server" && len(args) > 1 && args[1] == "bmc":
		err = admin(ctx, args[2:], stdout, 1, func(ctx context.Context, a *controlplane.Admin, f *adminFlags) (any, string, error) {
			name := f.fs.Arg(0)
			if f.bmc == "" {
				spec, err := a.BMC(ctx, name)
				return map[string]string{"server": name, "bmc": spec}, "server " + name + ": bmc " + spec, err
			}
			spec, pw, err := bmcFlags(f, true)
			if err != nil {
				return nil, "", err
			}
			if err := a.SetBMC(ctx, name, spec, pw); err != nil {
				return nil, "", err
			}
			return map[string]string{"server": name, "bmc": spec.String()}, "server " + name + ": bmc " + spec.String(), nil
		})
	case cmd == "server" && len(args) > 1 && args[1] == "token":
		err = admin(ctx, args[2:], stdout, 1, func(ctx context.Context, a *controlplane.Admin, f *adminFlags) (any, string, error) {
			name := f.fs.Arg(0)
			t, err := a.NewAgentToken(ctx, name)
			if err != nil {
				return nil, "", err
			}
			return map[string]string{"server": name, "agentToken": t}, "server     " + name + "\nagentToken " + t + "\n(shown only now; the previous token no longer works)", nil
		})
	default:
		fmt.Fprintln(stderr, usage)
		return 2
	}
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 2
		}
		fmt.Fprintln(stderr, "byoi-api:", err)
		return 1
	}
	return 0
}

type dbFlags struct {
	db, keyFile string
}

func (d *dbFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&d.db, "db", "byoi.db", "SQLite database file, or a PostgreSQL URL (postgres://user@host/db?sslmode=...)")
	fs.StringVar(&d.keyFile, "key-file", "", "key file sealing secrets at rest (default: the SQLite database path + .key; required with PostgreSQL)")
}

// open opens the store --db names: a PostgreSQL URL, or a SQLite file.
func (d *dbFlags) open(ctx context.Context) (store.Store, *controlplane.Keyring, error) {
	return open.Store(ctx, d.db, d.keyFile)
}

// shown is the database for a log line: a PostgreSQL URL without its
// password.
func (d *dbFlags) shown() string {
	if !pgstore.IsDSN(d.db) {
		return d.db
	}
	u, err := url.Parse(d.db)
	if err != nil {
		return "postgres://?"
	}
	return u.Redacted()
}

type adminFlags struct {
	fs       *flag.FlagSet
	db       dbFlags
	json     bool
	customer string
	macs     macList
	expires  time.Duration
	// server add, server bmc: the power driver (bmc.go).
	bmc          string
	passwordFile string
	passwordEnv  string
}

func orNever(s string) string {
	if s == "" {
		return "never"
	}
	return s
}

// secretTable is `token list` or `credential list` for a terminal.
func secretTable(l []controlplane.Secret, appKeys bool) string {
	var b strings.Builder
	if appKeys {
		fmt.Fprintf(&b, "%-6s %-20s %-16s %-8s %-20s %-20s %s\n", "ID", "CUSTOMER", "APPLICATION KEY", "STATUS", "CREATED", "EXPIRES", "REVOKED")
	} else {
		fmt.Fprintf(&b, "%-6s %-20s %-8s %-20s %-20s %s\n", "ID", "CUSTOMER", "STATUS", "CREATED", "EXPIRES", "REVOKED")
	}
	for _, x := range l {
		if appKeys {
			fmt.Fprintf(&b, "%-6d %-20s %-16s %-8s %-20s %-20s %s\n", x.ID, x.Customer, x.ApplicationKey, x.Status, x.Created, orNever(x.Expires), x.Revoked)
		} else {
			fmt.Fprintf(&b, "%-6d %-20s %-8s %-20s %-20s %s\n", x.ID, x.Customer, x.Status, x.Created, orNever(x.Expires), x.Revoked)
		}
	}
	return strings.TrimSuffix(b.String(), "\n")
}

// macList is a repeatable --mac.
type macList []string

func (m *macList) String() string     { return strings.Join(*m, ",") }
func (m *macList) Set(v string) error { *m = append(*m, v); return nil }

// parseInterspersed parses flags anywhere among the arguments.
func parseInterspersed(fs *flag.FlagSet, args []string) error {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return err
		}
		if fs.NArg() == 0 {
			break
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
	return fs.Parse(append([]string{"--"}, pos...))
}

func admin(ctx context.Context, args []string, stdout io.Writer, nargs int, fn func(context.Context, *controlplane.Admin, *adminFlags) (any, string, error)) error {
	f := &adminFlags{fs: flag.NewFlagSet("byoi-api", flag.ContinueOnError)}
	f.db.register(f.fs)
	f.fs.BoolVar(&f.json, "json", false, "print JSON")
	f.fs.StringVar(&f.customer, "customer", "", "customer name")
	f.fs.Var(&f.macs, "mac", "a MAC address the server boots from the network with (repeat for several)")
	f.fs.DurationVar(&f.expires, "expires", 0, "token add, credential add: it stops working this long after (e.g. 720h; 0: never)")
	f.fs.StringVar(&f.bmc, "bmc", "", "server add, server bmc: the power driver, none or ipmi://USER@HOST[:623] (the password from --password-file, --password-env or stdin, never here)")
	f.fs.StringVar(&f.passwordFile, "password-file", "", "server add, server bmc: a file holding the BMC password on one line (- for stdin)")
	f.fs.StringVar(&f.passwordEnv, "password-env", "", "server add, server bmc: the environment variable holding the BMC password")
	if err := parseInterspersed(f.fs, args); err != nil {
		return err
	}
	if f.expires < 0 {
		return errors.New("--expires is a duration from now (e.g. 720h), or 0 for never")
	}
	if f.fs.NArg() != nargs {
		return fmt.Errorf("want %d argument(s), got %d\n%s", nargs, f.fs.NArg(), usage)
	}
	st, keys, err := f.db.open(ctx)
	if err != nil {
		return err
	}
	defer st.Close()
	v, text, err := fn(ctx, &controlplane.Admin{Store: st, Keys: keys}, f)
	if err != nil {
		return err
	}
	if f.json {
		b, _ := json.Marshal(v)
		_, err = fmt.Fprintln(stdout, string(b))
	} else {
		_, err = fmt.Fprintln(stdout, text)
	}
	return err
}

func serve(ctx context.Context, args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("byoi-api serve", flag.ContinueOnError)
	var d dbFlags
	d.register(fs)
	listen := fs.String("listen", "127.0.0.1:8080", "address to listen on (the customer API and the panel; the agent API and network boot too unless --agent-listen, --boot-listen)")
	agentListen := fs.String("agent-listen", "", "serve the agent API (/agent/v1) on this address only, not on --listen (TLS with --tls-cert too)")
	bootListen := fs.String("boot-listen", "", "serve network boot (/boot, plain HTTP) on this address only, not on --listen")
	maxAttempts := fs.Int("max-attempts", 3, "fail a deployment whose agent restarted this many times (0: no cap)")
	bodyMemory := fs.Int64("body-memory", 256, "MiB of request bodies held at once, all requests together (beyond: 503)")
	bootRate := fs.Int("boot-rate", controlplane.DefaultBootRatePerMinute, "with --rescue-dir: network boot requests a minute per source address (-1: no limit)")
	bootBurst := fs.Int("boot-burst", controlplane.DefaultBootBurst, "with --rescue-dir: network boot requests a source may send at once")
	bootProxies := fs.String("boot-trusted-proxy", "", "with --rescue-dir: addresses or CIDRs of proxies whose X-Forwarded-For names a network boot request's source")
	tlsCert := fs.String("tls-cert", "", "TLS certificate file (PEM)")
	tlsKey := fs.String("tls-key", "", "TLS key file (PEM)")
	publicURL := fs.String("public-url", "", "URL clients reach this server's root at, behind a proxy (e.g. https://api.example.com/byoi): signatures are checked against it")
	agentTimeout := fs.Duration("agent-timeout", 5*time.Minute, "fail a deployment whose agent has been silent this long")
	pickupTimeout := fs.Duration("pickup-timeout", time.Hour, "fail a deployment no agent picked up this long after it was posted (0: wait for ever)")
	rescueTimeout := fs.Duration("rescue-timeout", 10*time.Minute, "fail a deployment whose server (with a BMC) did not boot into rescue this long after byoi-api power-cycled it")
	pprofAddr := fs.String("pprof", "", "serve net/http/pprof on this address (e.g. 127.0.0.1:6060)")
	verbose := fs.Bool("v", false, "log every request")
	rescueDir := fs.String("rescue-dir", "", "serve network boot (iPXE) with the rescue system in this directory (vmlinuz, initrd.img: scripts/build-rescue.sh)")
	bootURL := fs.String("boot-url", "", "with --rescue-dir: the plain-HTTP URL servers' iPXE reaches this server at (e.g. http://10.0.2.2:8080)")
	agentURL := fs.String("agent-url", "", "with --rescue-dir: the URL the rescue agent reaches this server at (default: --boot-url)")
	rescueCmdline := fs.String("rescue-cmdline", "console=tty0 console=ttyS0,115200", "with --rescue-dir: added to the rescue kernel's command line")
	serverFacts := fs.String("server-facts", "", "JSON file of what you know about your servers (datacenter, ip, rack, linkSpeed...) for OVH's server fields; without it they are null")
	var fleet fleetFlags // issue 28: --image-cache..., --metrics-listen (fleet.go)
	fleet.register(fs)
	if err := parseInterspersed(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 0 {
		return fmt.Errorf("serve takes no arguments\n%s", usage)
	}
	if (*tlsCert == "") != (*tlsKey == "") {
		return errors.New("--tls-cert and --tls-key go together")
	}
	level := slog.LevelWarn
	if *verbose {
		level = slog.LevelInfo
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	st, keys, err := d.open(ctx)
	if err != nil {
		return err
	}
	defer st.Close()
	attempts := *maxAttempts
	if attempts == 0 {
		attempts = -1 // no cap
	}
	if *bodyMemory <= 0 {
		return errors.New("--body-memory must be 1 (MiB) or more")
	}
	cfg := controlplane.Config{Store: st, Keys: keys, Logger: log, PublicURL: strings.TrimSuffix(*publicURL, "/"), AgentTimeout: *agentTimeout, PickupTimeout: *pickupTimeout,
		MaxAttempts: attempts, BodyMemory: *bodyMemory << 20, Power: controlplane.PowerConfig{RescueTimeout: *rescueTimeout, Options: power.Options{Logger: log}}}
	if *serverFacts != "" {
		if cfg.Facts, err = controlplane.LoadFacts(*serverFacts); err != nil {
			return err
		}
	}
	if *rescueDir != "" {
		proxies, err := controlplane.ParseTrustedProxies(*bootProxies)
		if err != nil {
			return fmt.Errorf("--boot-trusted-proxy: %w", err)
		}
		if *bootRate == 0 {
			return errors.New("--boot-rate must be a number of requests a minute, or -1 for no limit")
		}
		cfg.Netboot = &controlplane.NetbootConfig{RescueDir: *rescueDir, BootURL: *bootURL, AgentURL: *agentURL, Cmdline: *rescueCmdline,
			RatePerMinute: *bootRate, Burst: *bootBurst, TrustedProxies: proxies}
	} else if *bootURL != "" || *agentURL != "" || *bootListen != "" {
		return errors.New("--boot-url, --agent-url and --boot-listen go with --rescue-dir")
	}
	stopFleet, err := fleet.apply(ctx, &cfg, *listen, log)
	defer stopFleet()
	if err != nil {
		return err
	}
	srv, err := controlplane.New(cfg)
	if err != nil {
		return err
	}
	// The listeners: --listen serves every part the others do not.
	type listener struct {
		addr  string
		parts controlplane.Part
		tls   bool
		what  string
	}
	main := listener{addr: *listen, parts: controlplane.PartAll, tls: *tlsCert != "", what: "customer API"}
	ls := []*listener{&main}
	if *agentListen != "" {
		main.parts &^= controlplane.PartAgent
		ls = append(ls, &listener{addr: *agentListen, parts: controlplane.PartAgent, tls: *tlsCert != "", what: "agent API"})
	}
	if *bootListen != "" {
		main.parts &^= controlplane.PartBoot
		ls = append(ls, &listener{addr: *bootListen, parts: controlplane.PartBoot, what: "network boot"})
	}
	var servers []*http.Server
	errc := make(chan error, len(ls))
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for _, l := range ls {
		ln, err := net.Listen("tcp", l.addr)
		if err != nil {
			for _, hs := range servers {
				hs.Close()
			}
			return fmt.Errorf("%s: %w", l.what, err)
		}
		// Agents and customers keep their connections (HTTP/1.1
		// keep-alive): an idle one is closed after 2 minutes; headers must
		// come within 10 s and stay small (our requests carry a few short
		// ones). Bodies have their own deadline, set per request once the
		// request is authenticated (controlplane's readBody).
		hs := &http.Server{Handler: srv.HandlerFor(l.parts), ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute, MaxHeaderBytes: 64 << 10,
			ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}
		servers = append(servers, hs)
		go func(l *listener) {
			if l.tls {
				errc <- hs.ServeTLS(ln, *tlsCert, *tlsKey)
			} else {
				errc <- hs.Serve(ln)
			}
		}(l)
		log.Warn("byoi-api serving", "addr", ln.Addr().String(), "serves", l.what+partsText(l.parts), "tls", l.tls, "db", d.shown(), "netboot", cfg.Netboot != nil)
	}
	if *pprofAddr != "" {
		// Block and mutex profiles too (/debug/pprof/block, /mutex): a
		// sample of waits longer than 100 µs and of 1 in 20 contended locks.
		runtime.SetBlockProfileRate(100_000)
		runtime.SetMutexProfileFraction(20)
		mux := http.NewServeMux()
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		go http.ListenAndServe(*pprofAddr, mux)
	}
	go srv.RunTimeouts(ctx)
	go srv.RunPower(ctx)
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	sctx, scancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer scancel()
	var serr error
	for _, hs := range servers {
		serr = errors.Join(serr, hs.Shutdown(sctx))
	}
	return serr
}

// partsText names what a listener serves besides its first part.
func partsText(p controlplane.Part) string {
	var also []string
	if p&controlplane.PartCustomer != 0 && p != controlplane.PartCustomer {
		if p&controlplane.PartAgent != 0 {
			also = append(also, "agent API")
		}
		if p&controlplane.PartBoot != 0 {
			also = append(also, "network boot")
		}
	}
	if len(also) == 0 {
		return ""
	}
	return ", " + strings.Join(also, ", ")
}
