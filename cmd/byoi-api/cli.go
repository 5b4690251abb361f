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
	"strings"
	"time"

	"github.com/byoi/byoi/controlplane"
	"github.com/byoi/byoi/controlplane/store"
	"github.com/byoi/byoi/controlplane/store/open"
	"github.com/byoi/byoi/controlplane/store/pgstore"
)

const usage = `usage:
  byoi-api serve [--db FILE] [--listen ADDR] [--tls-cert FILE --tls-key FILE] [--public-url URL]
                 [--agent-timeout 5m] [--pickup-timeout 1h] [--pprof ADDR] [-v]
                 [--rescue-dir DIR --boot-url http://HOST:PORT [--agent-url URL] [--rescue-cmdline ARGS]]
                 [--image-cache DIR [--image-cache-size 50GiB] [--image-cache-per-host 4] [--image-cache-allow CIDR]...]
                 [--metrics-listen ADDR]
  byoi-api customer add NAME
  byoi-api credential add --customer NAME
  byoi-api token add --customer NAME
  byoi-api server add NAME --customer NAME [--mac MAC]...
  byoi-api server macs NAME [--mac MAC]...       (replaces the MACs; none: no network boot)
  byoi-api server token NAME
Every command takes --db FILE (default byoi.db), --key-file FILE (default FILE.key
beside the database, created 0600 on first use) and --json (admin commands).
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
			c, err := a.AddCredential(ctx, f.customer)
			if err != nil {
				return nil, "", err
			}
			return c, fmt.Sprintf("applicationKey    %s\napplicationSecret %s\nconsumerKey       %s\n(the secret and consumer key are shown only now)", c.ApplicationKey, c.ApplicationSecret, c.ConsumerKey), nil
		})
	case cmd == "token" && len(args) > 1 && args[1] == "add":
		err = admin(ctx, args[2:], stdout, 0, func(ctx context.Context, a *controlplane.Admin, f *adminFlags) (any, string, error) {
			t, err := a.AddToken(ctx, f.customer)
			if err != nil {
				return nil, "", err
			}
			return map[string]string{"accessToken": t}, "accessToken " + t + "\n(shown only now)", nil
		})
	case cmd == "server" && len(args) > 1 && args[1] == "add":
		err = admin(ctx, args[2:], stdout, 1, func(ctx context.Context, a *controlplane.Admin, f *adminFlags) (any, string, error) {
			name := f.fs.Arg(0)
			t, err := a.AddServerMACs(ctx, name, f.customer, f.macs)
			if err != nil {
				return nil, "", err
			}
			return map[string]string{"server": name, "agentToken": t}, "server     " + name + "\nagentToken " + t + "\n(shown only now)", nil
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
	if err := parseInterspersed(f.fs, args); err != nil {
		return err
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
	listen := fs.String("listen", "127.0.0.1:8080", "address to listen on")
	tlsCert := fs.String("tls-cert", "", "TLS certificate file (PEM)")
	tlsKey := fs.String("tls-key", "", "TLS key file (PEM)")
	publicURL := fs.String("public-url", "", "URL clients reach this server's root at, behind a proxy (e.g. https://api.example.com/byoi): signatures are checked against it")
	agentTimeout := fs.Duration("agent-timeout", 5*time.Minute, "fail a deployment whose agent has been silent this long")
	pickupTimeout := fs.Duration("pickup-timeout", time.Hour, "fail a deployment no agent picked up this long after it was posted (0: wait for ever)")
	pprofAddr := fs.String("pprof", "", "serve net/http/pprof on this address (e.g. 127.0.0.1:6060)")
	verbose := fs.Bool("v", false, "log every request")
	rescueDir := fs.String("rescue-dir", "", "serve network boot (iPXE) with the rescue system in this directory (vmlinuz, initrd.img: scripts/build-rescue.sh)")
	bootURL := fs.String("boot-url", "", "with --rescue-dir: the plain-HTTP URL servers' iPXE reaches this server at (e.g. http://10.0.2.2:8080)")
	agentURL := fs.String("agent-url", "", "with --rescue-dir: the URL the rescue agent reaches this server at (default: --boot-url)")
	rescueCmdline := fs.String("rescue-cmdline", "console=tty0 console=ttyS0,115200", "with --rescue-dir: added to the rescue kernel's command line")
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
	cfg := controlplane.Config{Store: st, Keys: keys, Logger: log, PublicURL: strings.TrimSuffix(*publicURL, "/"), AgentTimeout: *agentTimeout, PickupTimeout: *pickupTimeout}
	if *rescueDir != "" {
		cfg.Netboot = &controlplane.NetbootConfig{RescueDir: *rescueDir, BootURL: *bootURL, AgentURL: *agentURL, Cmdline: *rescueCmdline}
	} else if *bootURL != "" || *agentURL != "" {
		return errors.New("--boot-url and --agent-url go with --rescue-dir")
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
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	// Agents and customers keep their connections (HTTP/1.1 keep-alive):
	// an idle one is closed after 2 minutes; headers must come within 10 s
	// and stay small (our requests carry a few short ones).
	hs := &http.Server{Handler: srv.Handler(), ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute, MaxHeaderBytes: 64 << 10,
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}
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
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go srv.RunTimeouts(ctx)
	errc := make(chan error, 1)
	go func() {
		if *tlsCert != "" {
			errc <- hs.ServeTLS(ln, *tlsCert, *tlsKey)
		} else {
			errc <- hs.Serve(ln)
		}
	}()
	log.Warn("byoi-api serving", "addr", ln.Addr().String(), "tls", *tlsCert != "", "db", d.shown(), "netboot", cfg.Netboot != nil)
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	sctx, scancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer scancel()
	return hs.Shutdown(sctx)
}
