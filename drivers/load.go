package drivers

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// Loader loads the modules the devices of a machine need.
type Loader struct {
	// ModDir is /lib/modules/<version>: it holds modules.alias,
	// modules.dep, modules.builtin and the modules.
	ModDir string
	// SysRoot is /sys (a fake tree in tests).
	SysRoot string
	// Load loads one module file (default: finit_module(2)); it returns
	// an error wrapping os.ErrExist when the module is already loaded.
	Load func(path string) error
	// Loaded tells the modules loaded already (default: /proc/modules).
	Loaded func() map[string]bool
	// Always are modules loaded first whatever the devices (efivarfs).
	Always []string
	// Settle is how long a round waits for devices that appear after a
	// probe (USB enumeration, SCSI scans; default 300 ms); Rounds bounds
	// the rounds (default 12).
	Settle time.Duration
	Rounds int
	// Log gets one line per module loaded or failed (may be nil).
	Log func(format string, a ...any)
}

// Result is what a Load did.
type Result struct {
	Loaded []string          // modules loaded, in order
	Failed map[string]string // module → why it failed
	Rounds int
	// Devices is how many devices with a modalias the last round saw.
	Devices int
}

// Index reads a module directory's modules.alias, modules.dep and
// modules.builtin.
func Index(modDir string) (*Aliases, *Modules, error) {
	f, err := os.Open(filepath.Join(modDir, "modules.alias"))
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	al, err := ParseAliases(f)
	if err != nil {
		return nil, nil, err
	}
	g, err := os.Open(filepath.Join(modDir, "modules.dep"))
	if err != nil {
		return nil, nil, err
	}
	defer g.Close()
	mods, err := ParseDeps(g)
	if err != nil {
		return nil, nil, err
	}
	if b, err := os.Open(filepath.Join(modDir, "modules.builtin")); err == nil {
		defer b.Close()
		if err := mods.AddBuiltin(b); err != nil {
			return nil, nil, err
		}
	}
	return al, mods, nil
}

// Run loads, round after round, the modules whose aliases match a modalias
// not seen before, until a round finds no new modalias (or ctx ends).
func (l *Loader) Run(ctx context.Context) (Result, error) {
	res := Result{Failed: map[string]string{}}
	al, mods, err := Index(l.ModDir)
	if err != nil {
		return res, err
	}
	load, loadedNow := l.Load, l.Loaded
	if load == nil {
		load = finitModule
	}
	if loadedNow == nil {
		loadedNow = procModules
	}
	settle, rounds := l.Settle, l.Rounds
	if settle == 0 {
		settle = 300 * time.Millisecond
	}
	if rounds == 0 {
		rounds = 12
	}
	logf := l.Log
	if logf == nil {
		logf = func(string, ...any) {}
	}
	loaded := loadedNow()
	tried := map[string]bool{}
	want := func(m string) {
		if tried[m] || loaded[m] {
			return
		}
		tried[m] = true
		order, err := mods.Order(m, loaded)
		if err != nil {
			res.Failed[m] = err.Error()
			return
		}
		for _, n := range order {
			err := load(filepath.Join(l.ModDir, mods.Path[n]))
			switch {
			case err == nil:
				loaded[n] = true
				res.Loaded = append(res.Loaded, n)
				logf("loaded %s", n)
			case errors.Is(err, os.ErrExist):
				loaded[n] = true
			default:
				// ENODEV: the driver found nothing to drive (a class
				// alias that matches loosely); its dependants are not
				// loaded either.
				res.Failed[n] = err.Error()
				logf("%s: %v", n, err)
				return
			}
		}
	}
	for _, m := range l.Always {
		want(Normalize(m))
	}
	seen := map[string]bool{}
	for res.Rounds < rounds {
		if err := ctx.Err(); err != nil {
			return res, err
		}
		devs, err := Scan(l.SysRoot)
		if err != nil {
			return res, err
		}
		res.Devices = len(devs)
		var fresh []string
		for _, d := range devs {
			if !seen[d.Modalias] {
				seen[d.Modalias] = true
				fresh = append(fresh, d.Modalias)
			}
		}
		res.Rounds++
		if len(fresh) == 0 {
			// Nothing new: wait once for late devices, then stop.
			if res.Rounds > 1 && !l.lateDevices(ctx, seen, settle) {
				break
			}
			continue
		}
		sort.Strings(fresh)
		for _, a := range fresh {
			for _, m := range al.Match(a) {
				want(m)
			}
		}
		select {
		case <-ctx.Done():
			return res, ctx.Err()
		case <-time.After(settle):
		}
	}
	return res, nil
}

// lateDevices waits up to settle for a modalias not in seen.
func (l *Loader) lateDevices(ctx context.Context, seen map[string]bool, settle time.Duration) bool {
	deadline := time.Now().Add(settle)
	for {
		devs, err := Scan(l.SysRoot)
		if err == nil {
			for _, d := range devs {
				if !seen[d.Modalias] {
					return true
				}
			}
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return false
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// procModules is the modules loaded now (/proc/modules).
func procModules() map[string]bool {
	m := map[string]bool{}
	b, err := os.ReadFile("/proc/modules")
	if err != nil {
		return m
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) > 0 {
			m[f[0]] = true
		}
	}
	return m
}

func (r Result) String() string {
	return fmt.Sprintf("%d modules loaded in %d rounds for %d devices, %d failed", len(r.Loaded), r.Rounds, r.Devices, len(r.Failed))
}
