package controlplane

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/byoi/byoi/agentapi"
	"github.com/byoi/byoi/controlplane/power"
	"github.com/byoi/byoi/controlplane/store"
	"github.com/byoi/byoi/job"
)

// Power through the server's BMC (issue 25).
//
// A customer action that needs the server in rescue (a deployment POST,
// DELETE, a reboot request) queues a power task in the store when the
// server has a BMC; the power loop of any instance claims it under a lease
// (renewed while it acts; a dead instance's task is taken over), arms the
// server's network boot (store.ArmedReboot), asks the BMC for a one-time
// boot from the network and power-cycles the server (or powers it on),
// and writes the outcome into the deployment's history or the OVH task.
// Servers without a BMC (driver none) keep the old behaviour: they wait
// to be rebooted by hand. A deployment whose rescue agent is already live
// starts without a power cycle. No HTTP request waits for a BMC, except
// GET /dedicated/server/{sn}'s powerState, bounded (powerStateWait) and
// cached (powerStateTTL).

// PowerConfig configures power control.
type PowerConfig struct {
	// NewDriver makes the driver of a BMC (default power.New with
	// Options, power's defaults: every call bounded, retried with
	// backoff where safe).
	NewDriver func(spec power.BMC, pw power.Password) (power.Driver, error)
	Options   power.Options
	// RescueTimeout fails a deployment no agent picked up this long after
	// byoi-api's power action (default 10 minutes).
	RescueTimeout time.Duration
	// Lease is how long a claimed task is this instance's without a
	// renewal (default 2 minutes; renewed every Lease/3).
	Lease time.Duration
	// Every is how often the power loop looks for tasks (default 2 s).
	Every time.Duration
	// Owner names this instance in the claims (default a random id).
	Owner string
	// BootedTimeout: a deployed system that did not phone home this long
	// after done gets a warning (default 15 minutes).
	BootedTimeout time.Duration
}

const (
	powerStateTTL  = 30 * time.Second
	powerStateWait = 2 * time.Second
)

func (p *PowerConfig) defaults() {
	if p.NewDriver == nil {
		opts := p.Options
		p.NewDriver = func(spec power.BMC, pw power.Password) (power.Driver, error) { return power.New(spec, pw, opts) }
	}
	if p.RescueTimeout <= 0 {
		p.RescueTimeout = 10 * time.Minute
	}
	if p.Lease <= 0 {
		p.Lease = 2 * time.Minute
	}
	if p.BootedTimeout <= 0 {
		p.BootedTimeout = 15 * time.Minute
	}
	if p.Every <= 0 {
		p.Every = 2 * time.Second
	}
	if p.Owner == "" {
		p.Owner = "byoi-api-" + randomHex(8)
	}
}

// bmcAD is the additional data a server's BMC password is sealed with:
// a sealed password moved to another server does not open.
func bmcAD(serverID int64) string { return fmt.Sprintf("byoi bmc server %d", serverID) }

// driverFor is the driver of a server: None when it has no BMC.
func (s *Server) driverFor(ctx context.Context, serverID int64) (power.Driver, error) {
	b, err := s.st.ServerBMC(ctx, serverID)
	if errors.Is(err, store.ErrNotFound) {
		return power.None{}, nil
	}
	if err != nil {
		return nil, err
	}
	spec, err := power.ParseBMC(b.Spec)
	if err != nil {
		return nil, fmt.Errorf("server %d: stored BMC: %w", serverID, err)
	}
	plain, err := s.cfg.Keys.Open(b.SealedPassword, bmcAD(serverID))
	if err != nil {
		return nil, fmt.Errorf("server %d: the BMC password does not open with this key file", serverID)
	}
	pw, err := power.NewPassword(string(plain))
	if err != nil {
		return nil, fmt.Errorf("server %d: stored BMC password: %w", serverID, err)
	}
	return s.cfg.Power.NewDriver(spec, pw)
}

// hasBMC reports whether the server has a power driver other than none.
func (s *Server) hasBMC(ctx context.Context, serverID int64) (bool, error) {
	_, err := s.st.ServerBMC(ctx, serverID)
	if errors.Is(err, store.ErrNotFound) {
		return false, nil
	}
	return err == nil, err
}

// Power task actions of the control plane beyond store.PowerReboot.
const (
	// powerAgentWaiting: the deployment's rescue agent is live, nothing
	// is done to the power; the task only writes so in the history.
	powerAgentWaiting = "agent-waiting"
)

// queueReboot queues a reboot into the network boot for sv when it has
// a BMC, for a deployment (deploymentID) or an OVH task of no deployment
// (taskID), or for nothing (DELETE): false when it has none (someone
// reboots it by hand). A deployment whose agent is live is picked up
// without a reboot.
func (s *Server) queueReboot(ctx context.Context, sv store.Server, deploymentID, taskID int64) (bool, error) {
	has, err := s.hasBMC(ctx, sv.ID)
	if err != nil || !has {
		return false, err
	}
	action := store.PowerReboot
	now := s.cfg.Clock.Now()
	if deploymentID != 0 && store.AgentLive(sv, time.Time{}, now, 3*s.cfg.AgentHeartbeat, s.cfg.TokenGrace) {
		action = powerAgentWaiting
	}
	_, err = s.st.CreatePowerTask(ctx, store.PowerTask{ServerID: sv.ID, DeploymentID: deploymentID, TaskID: taskID, Action: action, CreatedAt: now})
	return err == nil, err
}

// RunPower runs the power loop until ctx ends: power tasks, and the rescue
// deadline.
func (s *Server) RunPower(ctx context.Context) {
	tick, stop := s.cfg.Clock.NewTicker(s.cfg.Power.Every)
	defer stop()
	for {
		if _, err := s.PowerRound(ctx); err != nil && ctx.Err() == nil {
			s.log.Error("power round failed", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-tick:
		}
	}
}

// PowerRound runs every power task that can be claimed now, one after
// the other, then fails the deployments whose server did not reach rescue
// in time. It returns the tasks it ran.
func (s *Server) PowerRound(ctx context.Context) ([]store.PowerTask, error) {
	var ran []store.PowerTask
	for ctx.Err() == nil {
		t, err := s.st.ClaimPowerTask(ctx, s.cfg.Power.Owner, s.cfg.Clock.Now(), s.cfg.Power.Lease)
		if errors.Is(err, store.ErrNotFound) {
			break
		}
		if err != nil {
			return ran, err
		}
		if err := s.runPowerTask(ctx, t); err != nil {
			return ran, err
		}
		ran = append(ran, t)
	}
	now := s.cfg.Clock.Now()
	exp, err := s.st.ExpireRescue(ctx, now, now.Add(-s.cfg.Power.RescueTimeout), s.cfg.Power.RescueTimeout)
	for _, e := range exp {
		s.log.Warn("deployment failed: the server did not boot into rescue", "deployment", e.DeploymentID, "task", e.TaskID, "limit", s.cfg.Power.RescueTimeout.String())
	}
	if err != nil {
		return ran, err
	}
	n, err := s.st.ExpireBootWatch(ctx, now, now.Add(-s.cfg.Power.BootedTimeout), s.cfg.Power.BootedTimeout)
	if n > 0 {
		s.log.Warn("deployed systems silent after done", "count", n, "limit", s.cfg.Power.BootedTimeout.String())
	}
	return ran, err
}

// runPowerTask acts on a claimed task and ends it, renewing its lease
// meanwhile.
func (s *Server) runPowerTask(ctx context.Context, t store.PowerTask) error {
	actx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(s.cfg.Power.Lease / 3)
		defer tick.Stop()
		for {
			select {
			case <-actx.Done():
				return
			case <-tick.C:
				if err := s.st.RenewPowerTask(actx, t.ID, s.cfg.Power.Owner, s.cfg.Clock.Now().Add(s.cfg.Power.Lease)); errors.Is(err, store.ErrGone) {
					cancel() // another instance has it now
					return
				}
			}
		}
	}()
	r := s.actOn(actx, t)
	s.forgetPowerState(t.ServerID)
	cancel()
	wg.Wait()
	r.Now = s.cfg.Clock.Now()
	err := s.st.FinishPowerTask(ctx, t.ID, s.cfg.Power.Owner, r)
	if errors.Is(err, store.ErrGone) {
		s.log.Warn("power task taken over by another instance", "power_task", t.ID)
		return nil
	}
	level := s.log.Info
	if r.Status == store.PowerError {
		level = s.log.Warn
	}
	level("power task ended", "power_task", t.ID, "server", t.ServerID, "deployment", t.DeploymentID, "task", t.TaskID, "status", r.Status, "code", string(r.Code))
	return err
}

// actOn does what task t asks and says how it went (never a secret: the
// power package's errors carry none).
func (s *Server) actOn(ctx context.Context, t store.PowerTask) store.PowerResult {
	if t.Action == powerAgentWaiting {
		return store.PowerResult{Status: store.PowerDone, Code: job.MsgPowerAgentWaiting, Message: job.Text(job.MsgPowerAgentWaiting)}
	}
	d, err := s.driverFor(ctx, t.ServerID)
	if err != nil {
		s.log.Error("power driver", "server", t.ServerID, "err", err)
		return store.PowerResult{Status: store.PowerError, Code: job.PowerFailed, Message: job.Text(job.PowerFailed, string(power.OpCycle), "byoi-api cannot use the server's BMC record")}
	}
	if d.Kind() == power.DriverNone {
		// The BMC was removed since the task was queued.
		return store.PowerResult{Status: store.PowerDone, Code: job.MsgPowerByHand, Message: job.Text(job.MsgPowerByHand)}
	}
	if err := s.st.ArmServer(ctx, t.ServerID, store.ArmedReboot); err != nil {
		return store.PowerResult{Status: store.PowerError, Code: job.PowerFailed, Message: job.Text(job.PowerFailed, string(power.OpCycle), "the server's network boot could not be armed")}
	}
	out, err := power.Reboot(ctx, d, s.bootMode(ctx, t.ServerID))
	if err != nil {
		var pe *power.Error
		if errors.As(err, &pe) {
			return store.PowerResult{Status: store.PowerError, Code: pe.MessageCode(), Message: pe.Error()}
		}
		s.log.Error("power action", "server", t.ServerID, "bmc", d.String(), "err", err)
		return store.PowerResult{Status: store.PowerError, Code: job.PowerFailed, Message: job.Text(job.PowerFailed, string(power.OpCycle), "interrupted")}
	}
	what := "power-cycled"
	if out.Action == power.ActionPoweredOn {
		what = "powered on"
	}
	r := store.PowerResult{Status: store.PowerDone, Code: job.MsgPowerRebooted, Message: job.Text(job.MsgPowerRebooted, what, d.String())}
	if code, text := out.Warning(); code != "" {
		r.Warning = &job.Event{Status: job.StatusDoing, Kind: job.KindWarning, Code: code, Message: text}
		s.log.Warn("BMC refused the boot override", "server", t.ServerID, "bmc", d.String())
	}
	return r
}

// bootMode is the server's firmware as its agent last reported it
// (legacy when unknown).
func (s *Server) bootMode(ctx context.Context, serverID int64) power.BootMode {
	sv, err := s.st.ServerByID(ctx, serverID)
	if err != nil || sv.Inventory == nil {
		return power.BootLegacy
	}
	var inv agentapi.Inventory
	if json.Unmarshal(sv.Inventory, &inv) == nil && inv.BootMode == agentapi.BootModeUEFI {
		return power.BootUEFI
	}
	return power.BootLegacy
}

// taskCommentFor is a task's comment: a reboot request's power task says
// what byoi-api is doing or did through the BMC; otherwise taskComment.
func (s *Server) taskCommentFor(ctx context.Context, t store.Task) string {
	if t.Function != store.FunctionHardReboot {
		return taskComment(t)
	}
	p, err := s.st.PowerTaskOf(ctx, t.ID)
	if err != nil {
		return taskComment(t)
	}
	if p.Status == store.PowerTodo || p.Status == store.PowerDoing {
		return job.Text(job.MsgPowerRebooting)
	}
	return p.Message
}

// powerStates caches the BMCs' power states (powerStateTTL): a GET of a
// server asks its BMC at most that often, and waits for it at most
// powerStateWait.
type powerStates struct {
	mu sync.Mutex
	m  map[int64]powerSample
}

type powerSample struct {
	state power.State
	at    time.Time
}

// powerState is the server's power state for GET /dedicated/server/{sn}:
// nil without a BMC, or when its BMC did not answer in time and nothing
// recent is known.
func (s *Server) powerState(ctx context.Context, serverID int64) *string {
	now := s.cfg.Clock.Now()
	s.states.mu.Lock()
	cached, ok := s.states.m[serverID]
	s.states.mu.Unlock()
	if ok && now.Sub(cached.at) < powerStateTTL {
		st := string(cached.state)
		return &st
	}
	d, err := s.driverFor(ctx, serverID)
	if err != nil || d.Kind() == power.DriverNone {
		return nil
	}
	wctx, cancel := context.WithTimeout(ctx, powerStateWait)
	defer cancel()
	st, err := d.Status(wctx)
	if err != nil {
		s.log.Warn("power state", "server", serverID, "bmc", d.String(), "err", err)
		return nil
	}
	s.states.mu.Lock()
	if s.states.m == nil {
		s.states.m = map[int64]powerSample{}
	}
	s.states.m[serverID] = powerSample{state: st, at: now}
	s.states.mu.Unlock()
	v := string(st)
	return &v
}

// forgetPowerState drops the cached state of a server (its power was
// just acted on, or its BMC changed).
func (s *Server) forgetPowerState(serverID int64) {
	s.states.mu.Lock()
	delete(s.states.m, serverID)
	s.states.mu.Unlock()
}
