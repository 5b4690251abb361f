package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/byoi/byoi/drivers"
)

// cmdDrivers is `byoi drivers load|list`: the rescue system's init loads
// the kernel modules its devices need (package drivers); list shows them.
func cmdDrivers(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("byoi drivers", flag.ContinueOnError)
	fs.SetOutput(stderr)
	modDir := fs.String("modules", "", "the module directory (default /lib/modules/$(uname -r))")
	sysRoot := fs.String("sys", "/sys", "sysfs")
	always := fs.String("always", "", "modules loaded whatever the devices, comma-separated (e.g. efivarfs,edd)")
	limit := fs.Duration("timeout", 60*time.Second, "the whole load's limit")
	asJSON := fs.Bool("json", false, "list: JSON")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "Usage: byoi drivers load [--always efivarfs,edd] | byoi drivers list [--json]")
		fs.PrintDefaults()
	}
	if len(args) == 0 {
		fs.Usage()
		return usagef("load or list?")
	}
	sub := args[0]
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	if *modDir == "" {
		rel, err := os.ReadFile("/proc/sys/kernel/osrelease")
		if err != nil {
			return err
		}
		*modDir = filepath.Join("/lib/modules", strings.TrimSpace(string(rel)))
	}
	switch sub {
	case "load":
		ctx, cancel := context.WithTimeout(ctx, *limit)
		defer cancel()
		l := &drivers.Loader{ModDir: *modDir, SysRoot: *sysRoot,
			Log: func(format string, a ...any) { fmt.Fprintf(stdout, "byoi drivers: "+format+"\n", a...) }}
		if *always != "" {
			l.Always = strings.Split(*always, ",")
		}
		res, err := l.Run(ctx)
		fmt.Fprintf(stdout, "byoi drivers: %s\n", res)
		return err
	case "list":
		al, _, err := drivers.Index(*modDir)
		if err != nil {
			al = nil
		}
		nics, err := drivers.NICs(*sysRoot)
		if err != nil {
			return err
		}
		un, err := drivers.FindUnclaimed(*sysRoot, al)
		if err != nil {
			return err
		}
		if *asJSON {
			return json.NewEncoder(stdout).Encode(map[string]any{"nics": nics, "unclaimed": un})
		}
		for _, n := range nics {
			fmt.Fprintf(stdout, "nic %s %s driver %s pci %s\n", n.Name, n.MAC, n.Driver, n.PCI)
		}
		for _, u := range un {
			fmt.Fprintf(stdout, "unclaimed %s: %s\n", u.Slot, u.Message())
		}
		return nil
	}
	return usagef("load or list, not %q", sub)
}
