package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/byoi/byoi/agentapi"
	"github.com/byoi/byoi/blockdev"
	"github.com/byoi/byoi/configdrive"
	"github.com/byoi/byoi/internal/logtail"
	"github.com/byoi/byoi/job"
)

// AgentConfig is what `byoi agent` runs with.
type AgentConfig struct {
	Client *Client
	// Env is the deployment environment (Machine, Target, download and
	// staging settings, Logger, Rebooter); Report is set per deployment.
	Env Env
	// Version is sent with the inventory.
	Version string
	// Once returns after one deployment ended (done or error) instead of
	// waiting for the next job: for tests and use by hand.
	Once bool
	// Progress receives every event too (the console), besides the
	// control plane.
	Progress Reporter
	// SysRoot is where boot mode and network interfaces are read ("" =
	// /sys).
	SysRoot string
	// ReportInterval and Heartbeat tune the HTTP reporter (0: defaults).
	ReportInterval, Heartbeat time.Duration
	// MaxWait caps the backoff while waiting for the control plane or a
	// job (default 30 s).
	MaxWait time.Duration
	// LogTail keeps the agent's own log (the Logger writes into it too):
	// its redacted tail is posted when a deployment fails (nil: none).
	LogTail *logtail.Buffer
	// KernelLog reads the kernel log's tail for that (nil:
	// logtail.Kernel).
	KernelLog KernelLogFunc
}

// Serve is the rescue agent: it waits (with backoff) for the control plane
// and posts the server's inventory, then waits for a job, runs it (Run:
// disk, pipeline, final status, reboot), and waits for the next one. A job
// re-served after a crash starts over as a new attempt. It returns when ctx
// ends, after one deployment with Once (nil when it ended done), or on an
// error retrying cannot fix (a refused token).
func Serve(ctx context.Context, cfg AgentConfig) error {
	log := cfg.Env.logger()
	if cfg.MaxWait <= 0 {
		cfg.MaxWait = 30 * time.Second
	}
	inv, err := Inventory(cfg.Env.machine(), cfg.SysRoot, cfg.Version)
	if err != nil {
		return fmt.Errorf("inventory: %w", err)
	}
	log.Info("agent starting", "server", cfg.Client.Server(), "bootMode", inv.BootMode, "diskGroups", len(inv.DiskGroups))
	if err := retry(ctx, log, cfg.MaxWait, "post the inventory", func() error { return cfg.Client.PostInventory(ctx, inv) }); err != nil {
		return err
	}
	log.Info("inventory posted; waiting for a job")
	if cfg.Env.Inventory == nil {
		cfg.Env.Inventory = &inv // the image checks' facts (issue 26)
	}
	for {
		var a *agentapi.Assignment
		err := retry(ctx, log, cfg.MaxWait, "ask for a job", func() error {
			var wait time.Duration
			var err error
			a, wait, err = cfg.Client.Job(ctx)
			if err == nil && a == nil {
				return waitFor(ctx, min(wait, cfg.MaxWait))
			}
			return err
		})
		if err != nil {
			return err
		}
		if a == nil {
			continue
		}
		err = runAssignment(ctx, cfg, a)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if cfg.Once {
			return err
		}
		if err != nil {
			log.Error("deployment failed; waiting for the next job", logAttrsErr(err))
		}
	}
}

// runAssignment runs one deployment as a new attempt.
func runAssignment(ctx context.Context, cfg AgentConfig, a *agentapi.Assignment) error {
	log := cfg.Env.logger()
	var attempt int
	var gone error
	if err := retry(ctx, log, cfg.MaxWait, "open an attempt", func() error {
		var err error
		attempt, err = cfg.Client.OpenAttempt(ctx, a.DeploymentID)
		if errors.Is(err, ErrGone) {
			gone = err // ended (cancelled, or its attempts were used up): no retry
			return nil
		}
		return err
	}); err != nil {
		return err
	}
	if gone != nil {
		return fmt.Errorf("open an attempt: %w", gone)
	}
	if attempt > 1 {
		log.Warn("this deployment was interrupted before: starting it over", "deployment", a.DeploymentID, "attempt", attempt)
	}
	log.Info("deployment assigned", "deployment", a.DeploymentID, "attempt", attempt)
	dctx, cancel := context.WithCancel(ctx)
	defer cancel()
	rep := NewHTTPReporter(cfg.Client, a.DeploymentID, attempt, ReporterOptions{
		Interval: cfg.ReportInterval, Heartbeat: cfg.Heartbeat, Logger: log,
		OnGone: func(err error) {
			log.Warn("the deployment was cancelled by the control plane: stopping", "error", err.Error())
			cancel()
		},
	})
	defer rep.Close()
	env := cfg.Env
	env.Report = teeReporter{FinalReporter: rep, also: cfg.Progress}
	env.Fetch = cacheFirst(env.Fetch, cfg.Client, a) // issue 28: the control plane's image cache first
	if p := a.EFIBootloaderPath; p != "" {
		if err := job.ValidateEFIBootloaderPath(p); err != nil {
			log.Warn("the server's efiBootloaderPath is ignored", "error", err.Error())
		} else {
			env.ServerEFIBootloaderPath = p
		}
	}
	if u := a.BootedURL; u != "" {
		// Checked here: a URL the ConfigDrive would refuse must not fail
		// the deployment (the errors never repeat the URL: a token).
		if _, err := configdrive.VendorData(u); err != nil {
			log.Warn("the control plane's booted URL is ignored", "error", err.Error())
		} else {
			env.PhoneHomeURL = u
		}
	}
	env.BeforeReboot = func(ctx context.Context, boot agentapi.BootInfo) {
		// The control plane's BIOS boot script needs the disk's key; a
		// few tries, then reboot anyway (the script falls back to the
		// BIOS's first disk).
		boot.DeploymentID = a.DeploymentID
		for i := 0; i < 5; i++ {
			err := cfg.Client.PostBoot(ctx, boot)
			if err == nil {
				log.Info("boot information posted", "diskKey", boot.DiskKey, "efiEntry", boot.EFIEntry)
				return
			}
			log.Warn("could not post the boot information", "error", err.Error())
			if waitFor(ctx, time.Duration(i+1)*time.Second) != nil {
				return
			}
		}
	}
	j, err := job.Parse(a.Job)
	if err != nil {
		// A job the control plane accepted but this agent refuses (a
		// newer control plane?): report it like any failure.
		reportFailure(dctx, &env, NewSink(env.Report, env.ProgressInterval), &stepError{job.StepPreflight, err})
		return err
	}
	_, err = Run(dctx, j, env)
	if err != nil && dctx.Err() == nil {
		uploadLogs(ctx, cfg, log, a.DeploymentID, attempt, jobSecrets(j, cfg.Client.token, a.BootedURL))
	}
	return err
}

// teeReporter sends events to the control plane's reporter and to the
// console.
type teeReporter struct {
	FinalReporter
	also Reporter
}

func (t teeReporter) Event(e job.Event) {
	t.FinalReporter.Event(e)
	if t.also != nil {
		t.also.Event(e)
	}
}

// Final shows the final event once the control plane stored it (or gave
// up): "deployment done" on the console means the customer sees it too.
func (t teeReporter) Final(ctx context.Context, e job.Event) error {
	err := t.FinalReporter.Final(ctx, e)
	if t.also != nil {
		t.also.Event(e)
	}
	return err
}

// retry runs fn until it succeeds, backing off from 1 s up to max on
// errors a retry may fix; a refused token or a cancelled ctx ends it.
func retry(ctx context.Context, log *slog.Logger, max time.Duration, what string, fn func() error) error {
	wait := time.Second
	for {
		err := fn()
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if errors.Is(err, ErrUnauthorized) {
			return fmt.Errorf("%s: %w", what, err)
		}
		if !Retryable(err) && !errors.Is(err, ErrGone) {
			return fmt.Errorf("%s: %w", what, err)
		}
		log.Warn("control plane: retrying", "what", what, "error", err.Error(), "in", wait)
		if err := waitFor(ctx, wait); err != nil {
			return err
		}
		wait = min(2*wait, max)
	}
}

func waitFor(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// Inventory describes the server for the control plane: its boot mode
// (UEFI when sysRoot/firmware/efi exists), its disk groups (blockdev's
// grouping, OVH's shape) and its network interfaces' MAC addresses.
func Inventory(m Machine, sysRoot, version string) (agentapi.Inventory, error) {
	if sysRoot == "" {
		sysRoot = "/sys"
	}
	inv := agentapi.Inventory{BootMode: agentapi.BootModeLegacy, AgentVersion: version, DiskGroups: []agentapi.DiskGroup{}, Features: Features()}
	if _, err := os.Stat(filepath.Join(sysRoot, "firmware", "efi")); err == nil {
		inv.BootMode = agentapi.BootModeUEFI
	}
	disks, err := m.Disks(blockdev.ScanOptions{})
	if err != nil {
		return inv, err
	}
	groups := blockdev.MakeGroups(disks)
	for _, g := range groups {
		dg := agentapi.DiskGroup{
			DiskGroupID:   g.ID,
			Description:   g.Description,
			DiskSize:      agentapi.DiskSize{Unit: "GB", Value: blockdev.GB(g.DiskSize)},
			DiskType:      g.DiskType,
			NumberOfDisks: len(g.Disks),
		}
		if g.RAIDController != "" {
			rc := g.RAIDController
			dg.RAIDController = &rc
		}
		inv.DiskGroups = append(inv.DiskGroups, dg)
		if len(inv.DiskGroups) == agentapi.MaxDiskGroups {
			break
		}
	}
	ents, _ := os.ReadDir(filepath.Join(sysRoot, "class", "net"))
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(sysRoot, "class", "net", e.Name(), "address"))
		if err != nil || e.Name() == "lo" {
			continue
		}
		if mac, err := agentapi.NormalizeMAC(strings.TrimSpace(string(b))); err == nil && mac != "00:00:00:00:00:00" {
			inv.MACs = append(inv.MACs, mac)
		}
		if len(inv.MACs) == 64 {
			break
		}
	}
	sort.Strings(inv.MACs)
	addHardware(&inv, groups, sysRoot, kernelModDir(sysRoot))
	inv.BootMAC = bootMAC(sysRoot, kernelCmdline(sysRoot), inv.NICs)
	return inv, nil
}
