package store

import (
	"context"
	"time"

	"github.com/byoi/byoi/job"
)

// Power through a server's BMC (issue 25): the operator's BMC record and
// the power tasks byoi-api runs.

// ServerBMC is a server's BMC: its spec in clear (power.BMC's String,
// never a password) and the password sealed by the control plane. A
// server without a record has the driver none.
type ServerBMC struct {
	ServerID       int64
	Spec           string
	SealedPassword []byte
	UpdatedAt      time.Time
}

// Power task statuses.
const (
	PowerTodo  = "todo"  // waiting for an instance to claim it
	PowerDoing = "doing" // claimed: an instance acts (under its lease)
	PowerDone  = "done"
	PowerError = "error"
)

// Power task actions.
const (
	// PowerReboot boots the server from the network: the one-time PXE
	// override, then a power cycle (or power on when it is off).
	PowerReboot = "reboot"
)

// MaxPowerClaims is how many times a power task is claimed: one whose
// instances died this many times while acting is failed (the power may
// have been cycled already; the BMC is not asked a fourth time).
const MaxPowerClaims = 3

// PowerTask is one thing byoi-api does to a server's power.
type PowerTask struct {
	ID           int64
	ServerID     int64
	DeploymentID int64 // the deployment it boots into rescue (0: none)
	TaskID       int64 // the OVH task it carries out when it has no deployment (hardReboot; 0: none)
	Action       string
	Status       string // PowerTodo, PowerDoing, PowerDone, PowerError
	Claims       int    // times claimed
	Owner        string // the instance holding it (doing)
	LeaseUntil   time.Time
	Code         job.Code // the outcome's catalog code
	Message      string   // its text
	CreatedAt    time.Time
	StartedAt    time.Time // first claim
	EndedAt      time.Time
}

// PowerResult is how a power task ended.
type PowerResult struct {
	Status  string   // PowerDone or PowerError
	Code    job.Code // catalog code of the outcome
	Message string   // its text (never a secret)
	// Warning, when set, is recorded in the deployment's history beside
	// the outcome (a refused boot override).
	Warning *job.Event
	Now     time.Time
}

// RescueExpired is a deployment failed because its server did not reach
// rescue in time after byoi-api's power action.
type RescueExpired struct {
	DeploymentID int64
	TaskID       int64
	ServerID     int64
}

// Power is the store's side of power control. Every rule holding across
// instances is the database's: a task is claimed by one instance at a
// time (a conditional update), and a claim whose lease ran out is taken
// over by the next instance that looks.
type Power interface {
	// ServerByID is server id, or ErrNotFound.
	ServerByID(ctx context.Context, id int64) (Server, error)
	// SetServerBMC stores the server's BMC (replacing the previous one);
	// a nil b.SealedPassword with b.Spec "none" removes it. ErrNotFound
	// for no such server.
	SetServerBMC(ctx context.Context, b ServerBMC) error
	// ServerBMC is the server's BMC, or ErrNotFound (driver none).
	ServerBMC(ctx context.Context, serverID int64) (ServerBMC, error)
	// CreatePowerTask stores a new task (status todo) and returns it with
	// its id. ErrNotFound for no such server.
	CreatePowerTask(ctx context.Context, t PowerTask) (PowerTask, error)
	// ClaimPowerTask claims the oldest task that is todo, or doing with a
	// lease ended at now (its instance died): status doing, owner, lease
	// until now+lease, one claim more. ErrNotFound when there is none.
	// A task claimed MaxPowerClaims times already is failed instead
	// (PowerClaimsExhausted) and the next one is looked for.
	ClaimPowerTask(ctx context.Context, owner string, now time.Time, lease time.Duration) (PowerTask, error)
	// RenewPowerTask extends owner's lease of task id to until: ErrGone
	// when owner no longer holds it.
	RenewPowerTask(ctx context.Context, id int64, owner string, until time.Time) error
	// FinishPowerTask ends task id held by owner (ErrGone when it does
	// not). A task of a deployment writes its outcome (and r.Warning) in
	// the deployment's history while it runs, and an error fails the
	// deployment (and its task) when no agent has opened an attempt yet;
	// a task of an OVH task of no deployment ends that task (done, or
	// ovhError).
	FinishPowerTask(ctx context.Context, id int64, owner string, r PowerResult) error
	// PowerTask is task id, or ErrNotFound.
	PowerTask(ctx context.Context, id int64) (PowerTask, error)
	// PowerTaskOf is the latest power task carrying out OVH task taskID,
	// or ErrNotFound.
	PowerTaskOf(ctx context.Context, taskID int64) (PowerTask, error)
	// PowerTasks lists the server's tasks, newest first.
	PowerTasks(ctx context.Context, serverID int64, limit int) ([]PowerTask, error)
	// ExpireRescue fails running deployments that no agent picked up
	// although a power task of theirs ended done before cutoff (the
	// server did not boot into rescue within limit); each once across
	// instances.
	ExpireRescue(ctx context.Context, now, cutoff time.Time, limit time.Duration) ([]RescueExpired, error)

	// The "booted" watch: after done, the new system phones home once.

	// WatchBoot sets the hash of deployment id's phone-home token
	// (replacing an earlier one: each job fetch mints a new token).
	// ErrNotFound for no such deployment.
	WatchBoot(ctx context.Context, deploymentID int64, tokenHash []byte, now time.Time) error
	// MarkBooted marks booted the deployment whose token hashes to
	// tokenHash, once, and writes it into its history (the time from
	// done): ErrNotFound for no such token, ErrGone when it was used
	// already or its deployment did not end done.
	MarkBooted(ctx context.Context, tokenHash []byte, now time.Time) (BootWatch, error)
	// BootWatch is deployment id's watch, or ErrNotFound (not watched).
	BootWatch(ctx context.Context, deploymentID int64) (BootWatch, error)
	// ExpireBootWatch warns, once each, of the deployments done before
	// cutoff whose new system never phoned home (limit after done).
	ExpireBootWatch(ctx context.Context, now, cutoff time.Time, limit time.Duration) (int, error)

	// PutDeploymentLogs stores the log tails of deployment l.DeploymentID
	// of server serverID (replacing earlier ones): ErrNotFound when the
	// server has no such deployment.
	PutDeploymentLogs(ctx context.Context, serverID int64, l DeploymentLogs) error
	// DeploymentLogs are a deployment's log tails, or ErrNotFound.
	DeploymentLogs(ctx context.Context, deploymentID int64) (DeploymentLogs, error)
}

// DeploymentLogs are the log tails a failed deployment's agent posted
// (redacted by the agent and again by the control plane).
type DeploymentLogs struct {
	DeploymentID int64
	Attempt      int
	Kernel       string
	Agent        string
	ReceivedAt   time.Time
}

// BootWatch is a deployment's "booted" watch.
type BootWatch struct {
	DeploymentID int64
	CreatedAt    time.Time
	BootedAt     time.Time // zero until it phoned home
	WarnedAt     time.Time // when it was declared silent (zero: not)
	DoneAt       time.Time // the deployment's end (MarkBooted)
}

// BootedEntry is the history entry of a new system that phoned home d
// after done.
func BootedEntry(d time.Duration, now time.Time) job.Event {
	return job.Event{Time: now, Status: job.StatusDone, Kind: job.KindInfo, Code: job.MsgBooted, Message: job.Text(job.MsgBooted, d.Round(time.Second).String())}
}

// NoSignOfLifeEntry warns that the new system did not phone home within
// d after done.
func NoSignOfLifeEntry(d time.Duration, now time.Time) job.Event {
	return job.Event{Time: now, Status: job.StatusDone, Kind: job.KindWarning, Code: job.MsgNoSignOfLife, Message: job.Text(job.MsgNoSignOfLife, d.String())}
}

// PowerEntry is the history entry of a power task's outcome.
func PowerEntry(r PowerResult) job.Event {
	kind := job.KindInfo
	if r.Status == PowerError {
		kind = job.KindWarning
	}
	return job.Event{Time: r.Now, Status: job.StatusDoing, Kind: kind, Code: r.Code, Message: r.Message}
}

// PowerFailEntry ends a deployment whose power task failed.
func PowerFailEntry(r PowerResult) job.Event {
	return job.Event{Time: r.Now, Status: job.StatusError, Kind: job.KindInfo, Code: r.Code, Message: r.Message}
}

// RescueTimeoutEntry ends a deployment whose server did not reach rescue
// within d of byoi-api's power action.
func RescueTimeoutEntry(d time.Duration, now time.Time) job.Event {
	return job.Event{Time: now, Status: job.StatusError, Kind: job.KindInfo, Code: job.MsgRescueTimeout, Message: job.Text(job.MsgRescueTimeout, d.String())}
}
