// Package store is the control plane's storage: the Store interface every
// backend implements (SQLite embedded, PostgreSQL for several API
// instances), its records and errors, and the few rules every backend
// shares (task statuses, the status texts the store writes itself).
//
// A Store holds no secret in clear: the control plane seals application
// secrets and job bodies (AES-256-GCM) before handing them over and stores
// only SHA-256 hashes of tokens and consumer keys.
//
// Every rule that must hold across several API instances is the
// database's: one running deployment per server (a partial unique index),
// ids (task, deployment, history position) from the database, and state
// transitions as conditional updates, so that of two instances racing the
// same transition exactly one wins.
package store

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/byoi/byoi/job"
)

// Deployment statuses. Cancelled is ours: a running deployment erased by
// DELETE .../bringYourOwnImage.
const (
	StatusDoing     = "doing"
	StatusDone      = "done"
	StatusError     = "error"
	StatusCancelled = "cancelled"
)

// Task statuses (OVH's enum).
const (
	TaskInit          = "init"
	TaskDoing         = "doing"
	TaskDone          = "done"
	TaskCustomerError = "customerError"
	TaskOVHError      = "ovhError"
	TaskCancelled     = "cancelled"
)

// FunctionReinstall is the function of a deployment's task (OVH's).
const FunctionReinstall = "reinstallServer"

// FunctionHardReboot is the function of a reboot request's task (OVH's
// POST .../reboot). Its task belongs to no deployment (DeploymentID 0).
const FunctionHardReboot = "hardReboot"

// TaskTodo is OVH's task status of a task accepted and not started.
const TaskTodo = "todo"

// Boot ids of every server (OVH numbers boots per server; ours are fixed).
const (
	BootHarddisk int64 = 1
	BootRescue   int64 = 2
)

// History entry sources.
const (
	SourceAgent        = "agent"
	SourceControlPlane = "controlplane"
)

// Errors. Backends return these (wrapped or as is); the HTTP layer maps
// them to OVH's classes and statuses in one table.
var (
	ErrNotFound     = errors.New("not found")
	ErrExists       = errors.New("already exists")
	ErrGone         = errors.New("deployment has ended")
	ErrStaleAttempt = errors.New("not the deployment's current attempt")
)

// TaskRunningError is a second deployment refused while one runs.
type TaskRunningError struct {
	Task   Task
	Server string
}

func (e *TaskRunningError) Error() string {
	return job.Text(job.APITaskRunning, e.Task.ID, e.Task.Function, e.Task.Status, e.Server)
}

// AttemptsExhaustedError is an attempt refused because the deployment had
// its cap: the deployment has been failed.
type AttemptsExhaustedError struct{ Attempts int }

func (e *AttemptsExhaustedError) Error() string {
	return job.Text(job.APIAttemptsExhausted, e.Attempts)
}
func (e *AttemptsExhaustedError) Unwrap() error { return ErrGone }

// StaleAttemptError tells the agent which attempt is current.
type StaleAttemptError struct{ Got, Current int }

func (e *StaleAttemptError) Error() string {
	return fmt.Sprintf("attempt %d is not the current attempt %d", e.Got, e.Current)
}
func (e *StaleAttemptError) Unwrap() error { return ErrStaleAttempt }

// Customer owns servers and credentials.
type Customer struct {
	ID        int64
	Name      string
	CreatedAt time.Time
}

// Credential is an OVH-style application key, its sealed secret and the
// hash of its consumer key.
type Credential struct {
	ID              int64
	CustomerID      int64
	AppKey          string
	SealedSecret    []byte
	ConsumerKeyHash []byte
	CreatedAt       time.Time
	ExpiresAt       time.Time // zero: never
	RevokedAt       time.Time // zero: not revoked
	CustomerName    string    // filled by Credentials (listing) only
}

// Valid reports whether the credential may authenticate at now.
func (c Credential) Valid(now time.Time) bool { return Usable(c.ExpiresAt, c.RevokedAt, now) }

// AccessToken is a customer's bearer token (only its hash is stored).
type AccessToken struct {
	ID           int64
	CustomerID   int64
	Hash         []byte
	CreatedAt    time.Time
	ExpiresAt    time.Time // zero: never
	RevokedAt    time.Time // zero: not revoked
	CustomerName string    // filled by AccessTokens (listing) only
}

// Valid reports whether the token may authenticate at now.
func (t AccessToken) Valid(now time.Time) bool { return Usable(t.ExpiresAt, t.RevokedAt, now) }

// Usable is the rule of every revocable secret: not revoked, and not
// expired at now (a zero expiry never comes).
func Usable(expires, revoked, now time.Time) bool {
	return revoked.IsZero() && (expires.IsZero() || now.Before(expires))
}

// Server is a bare-metal server.
type Server struct {
	ID                int64
	CustomerID        int64
	Name              string
	MAC               string // as given at creation; network boot goes by ServerMACs
	BootID            int64
	EFIBootloaderPath string
	Inventory         []byte // agentapi.Inventory JSON, nil until the agent posted one
	InventoryAt       time.Time
	CreatedAt         time.Time
	// The agent token and network boot's rules about it (rules.go).
	Armed       ArmState
	TokenSource int       // TokenByOperator or TokenByNetboot
	TokenAt     time.Time // when a TokenByNetboot token was minted
	TokenDoneAt time.Time // when the deployment of a TokenByNetboot token ended done
	AgentSeen   time.Time // the agent's last request outside a deployment's events (TouchAgent)
	HasToken    bool      // an agent token is set (not revoked)
	// Props are the properties the customer set with OVH's PUT
	// /dedicated/server/{sn} beyond bootId and efiBootloaderPath
	// (monitoring, state, bootScript...): a JSON document the control
	// plane owns, nil until first set.
	Props []byte
}

// Sources of a server's agent token.
const (
	// TokenByOperator: issued by hand (server add, server token): it
	// works until replaced or revoked.
	TokenByOperator = 0
	// TokenByNetboot: minted by a rescue script: revoked when the disk
	// script is served after its deployment ended done, or a while after
	// that end (Config.TokenGrace).
	TokenByNetboot = 1
)

// ArmState says whether a server's next rescue script mints an agent
// token.
type ArmState int

// Arm states.
const (
	// Disarmed: a rescue script mints a token only when the server's
	// agent is not live (MayMint).
	Disarmed ArmState = 0
	// ArmedRescue: a customer action asked for rescue (a new deployment,
	// PUT bootId rescue, DELETE): the next rescue script mints a token,
	// unless the server's agent is live (its rescue did not go away).
	ArmedRescue ArmState = 1
	// ArmedReboot: byoi-api rebooted or power-cycled the server (or is
	// about to): whatever its agent said before counts for nothing; the
	// next rescue script mints a token.
	ArmedReboot ArmState = 2
)

// Deployment is one BYOI deployment (either request shape) of a server.
type Deployment struct {
	ID         int64
	ServerID   int64
	ServerName string
	TaskID     int64
	Shape      job.Shape
	Checksum   string
	Status     string // doing done error cancelled
	Code       job.Code
	Message    string // the customer's message (job.ProgressMessage of the latest event)
	Attempt    int    // attempts opened so far; the current one
	LastSeq    int64  // last stored seq of the current attempt
	Step       job.Step
	BytesDone  int64
	BytesTotal int64
	Cleared    bool // DELETEd: no longer the server's current status, still in history
	// MaxAttempts is the attempt cap the deployment was created with (0:
	// none).
	MaxAttempts int
	CreatedAt   time.Time
	UpdatedAt   time.Time
	EndedAt     time.Time // zero while running
	LastSeen    time.Time // last word from the agent; zero until the first attempt
}

// Ended reports whether the deployment is over.
func (d *Deployment) Ended() bool { return d.Status != StatusDoing }

// Task is OVH's task of a deployment.
type Task struct {
	ID           int64
	ServerID     int64
	DeploymentID int64
	Function     string
	Status       string
	StartDate    time.Time
	LastUpdate   time.Time
	DoneDate     time.Time // zero while running
}

// Entry is one entry of a deployment's status history: an agent's event,
// or one the control plane wrote (created, restarted, silent, cancelled).
// N orders the entries of a deployment (1, 2, ...; a cursor for polling).
type Entry struct {
	N        int64
	Attempt  int
	Source   string
	Received time.Time
	// Rate is bytes per second since the previous progress event of the
	// same step (agent's clock), 0 when unknown.
	Rate float64
	job.Event
}

// Session is a Control Panel sign-in. Only the SHA-256 hash of its random
// id is stored (the id is the browser's cookie); the store never returns a
// session that has expired.
type Session struct {
	IDHash     []byte
	CustomerID int64
	CreatedAt  time.Time
	ExpiresAt  time.Time
	// AccessTokenID is the access token the session was opened with
	// (revoking it ends the session); 0: none.
	AccessTokenID int64
}

// BootInfo is how a server boots the disk a deployment wrote, as its agent
// reported it (agentapi.BootInfo) before rebooting: the network boot script
// uses it while that deployment is the server's current one, done.
type BootInfo struct {
	ServerID     int64
	DeploymentID int64
	DiskKey      string // "mbr:<8 hex>", "gpt:<32 hex>" or ""
	EFIEntry     string
	UpdatedAt    time.Time
}

// NewDeployment is what CreateDeployment needs.
type NewDeployment struct {
	ServerID  int64
	Shape     job.Shape
	SealedJob []byte
	Checksum  string
	// EFIBootloaderPath, when not empty, becomes the server's (reinstall
	// customization).
	EFIBootloaderPath string
	// MaxAttempts fails the deployment when its agent would open one
	// attempt more (0: no cap).
	MaxAttempts int
	Now         time.Time
}

// BootMint is what MintBootToken needs: the hash of a new agent token for
// the server, and the rule's parameters (MayMint).
type BootMint struct {
	ServerID  int64
	TokenHash []byte
	Now       time.Time
	// Silence: an agent not heard from for this long is not live (3x
	// the agent's heartbeat interval).
	Silence time.Duration
	// Grace: a TokenByNetboot token ends this long after its deployment
	// ended done.
	Grace time.Duration
}

// SealedSample is one value sealed with the key file, for checking a key
// against a database made before the key's check value existed.
type SealedSample struct {
	AppKey   string // a credential's application key ("" for a job)
	ServerID int64  // a job's server
	Sealed   []byte
}

// Append is one event batch of an agent.
type Append struct {
	ServerID     int64
	DeploymentID int64
	Attempt      int
	Events       []job.Event // validated, seq increasing
	Now          time.Time
}

// Ack is the answer to an Append: the last stored seq, and whether the
// deployment has ended (by a final event).
type Ack struct {
	Seq  int64
	Done bool
}

// Expired is a deployment the silence loop failed.
type Expired struct {
	DeploymentID int64
	TaskID       int64
	ServerID     int64
}

// Store is the control plane's storage. Methods return ErrNotFound when
// the record does not exist, never a zero value with a nil error.
type Store interface {
	// Customers and credentials.
	CreateCustomer(ctx context.Context, name string, now time.Time) (Customer, error)
	CustomerByName(ctx context.Context, name string) (Customer, error)
	Customer(ctx context.Context, id int64) (Customer, error)
	CreateCredential(ctx context.Context, c Credential) (Credential, error)
	CredentialByAppKey(ctx context.Context, appKey string) (Credential, error)
	CreateAccessToken(ctx context.Context, customerID int64, tokenHash []byte, now time.Time) error
	// CustomerByAccessToken is the customer of a token not revoked nor
	// expired (by the real clock).
	CustomerByAccessToken(ctx context.Context, tokenHash []byte) (Customer, error)

	// Revocable secrets. A revoked or expired one fails at once on every
	// instance: the API reads them on each request (no cache).

	// AddAccessToken stores t (its ID is set) and returns it.
	AddAccessToken(ctx context.Context, t AccessToken) (AccessToken, error)
	// AccessTokenByHash is a token as stored, revoked and expired ones too
	// (AccessToken.Valid says).
	AccessTokenByHash(ctx context.Context, tokenHash []byte) (AccessToken, error)
	// AccessTokens lists a customer's tokens (0: every customer's), by id.
	AccessTokens(ctx context.Context, customerID int64) ([]AccessToken, error)
	// RevokeAccessToken revokes token id (of customerID, 0: of anyone)
	// and deletes the panel sessions opened with it; ErrNotFound for no
	// such token, a token already revoked is not an error.
	RevokeAccessToken(ctx context.Context, customerID, id int64, now time.Time) error
	// CredentialByID is a credential as stored.
	CredentialByID(ctx context.Context, id int64) (Credential, error)
	// Credentials lists a customer's credentials (0: every customer's),
	// by id.
	Credentials(ctx context.Context, customerID int64) ([]Credential, error)
	// RevokeCredential revokes credential id (of customerID, 0: of
	// anyone); ErrNotFound for no such credential.
	RevokeCredential(ctx context.Context, customerID, id int64, now time.Time) error

	// RememberSignature records the hash of a signed request's signature
	// until expires, and forgets those expired at now: ErrExists when it
	// is already there (a replay), on every instance sharing the
	// database.
	RememberSignature(ctx context.Context, hash []byte, expires, now time.Time) error

	// The database's own settings (the key file's check value).

	// Meta is a setting's value, or ErrNotFound.
	Meta(ctx context.Context, name string) ([]byte, error)
	// PutMeta sets a setting that has none: ErrExists when it has one.
	PutMeta(ctx context.Context, name string, value []byte) error
	// Empty reports whether the database holds no customer, credential,
	// token or server.
	Empty(ctx context.Context) (bool, error)
	// SealedSample is one sealed value (a credential's secret, else a
	// job), or ErrNotFound when there is none.
	SealedSample(ctx context.Context) (SealedSample, error)

	// Control Panel sessions, shared by every instance on the database.

	// CreateSession stores a session (ErrExists for a hash already
	// there) and deletes the sessions expired at s.CreatedAt.
	CreateSession(ctx context.Context, s Session) error
	// SessionByHash is the session whose id hashes to idHash, or
	// ErrNotFound when there is none or it expired at now.
	SessionByHash(ctx context.Context, idHash []byte, now time.Time) (Session, error)
	// DeleteSession deletes a session; one already gone is not an error.
	DeleteSession(ctx context.Context, idHash []byte) error

	// Servers.
	CreateServer(ctx context.Context, s Server, agentTokenHash []byte) (Server, error)
	SetAgentToken(ctx context.Context, serverID int64, agentTokenHash []byte) error
	ServerByName(ctx context.Context, name string) (Server, error)
	ServerByAgentToken(ctx context.Context, tokenHash []byte) (Server, error)
	ListServers(ctx context.Context, customerID int64) ([]Server, error)
	SetBoot(ctx context.Context, serverID, bootID int64) error
	SetEFIBootloaderPath(ctx context.Context, serverID int64, path string) error
	PutInventory(ctx context.Context, serverID int64, inventory []byte, now time.Time) error
	// SetServerProps replaces the server's Props (ErrNotFound for no
	// such server).
	SetServerProps(ctx context.Context, serverID int64, props []byte) error

	// Network boot.

	// SetServerMACs replaces the MAC addresses (normalized, lower-case
	// colon form) that identify a server when it boots from the network:
	// ErrExists when one belongs to another server (nothing changes
	// then), ErrNotFound when the server does not exist. No MACs: none.
	SetServerMACs(ctx context.Context, serverID int64, macs []string) error
	// ServerMACs lists a server's MAC addresses, sorted.
	ServerMACs(ctx context.Context, serverID int64) ([]string, error)
	// ServerByMAC is the server a MAC address identifies, or ErrNotFound.
	ServerByMAC(ctx context.Context, mac string) (Server, error)
	// SetBootInfo records how the server boots the disk of b.DeploymentID,
	// replacing the previous record (ErrNotFound for no such server).
	SetBootInfo(ctx context.Context, b BootInfo) error
	// BootInfo is the server's latest record, or ErrNotFound.
	BootInfo(ctx context.Context, serverID int64) (BootInfo, error)

	// Boot tokens: network boot hands a server's rescue its agent token
	// once (rules.go).

	// ArmServer arms the server's network boot: its next rescue script
	// mints an agent token (MayMint). ArmedRescue is what a customer's
	// request for rescue does (CreateDeployment, SetBoot to rescue and
	// ClearDeployments arm by themselves); ArmedReboot is for byoi-api's
	// own reboots and power cycles (the rescue running now goes away).
	// An arm never lowers one already set. ErrNotFound for no server.
	ArmServer(ctx context.Context, serverID int64, how ArmState) error
	// MintBootToken stores m.TokenHash as the server's agent token
	// (TokenByNetboot) and disarms it, when MayMint says so; false when it
	// does not (nothing changes). Of two instances minting at once, one
	// mints.
	MintBootToken(ctx context.Context, m BootMint) (bool, error)
	// RevokeBootToken revokes the server's agent token when it is
	// TokenByNetboot, minted before doneAt (the end of the deployment
	// whose disk is now booted): true when it did.
	RevokeBootToken(ctx context.Context, serverID int64, doneAt time.Time) (bool, error)
	// TouchAgent records that the server's agent spoke at now (not
	// waited for on disk).
	TouchAgent(ctx context.Context, serverID int64, now time.Time) error

	// Deployments, as the customer sees them.

	// CreateDeployment creates a deployment and its task (status init),
	// sets the server's boot to rescue, or returns *TaskRunningError when
	// one runs (the database enforces it).
	CreateDeployment(ctx context.Context, d NewDeployment) (Deployment, Task, error)
	// CurrentDeployment is the server's latest deployment not cleared.
	CurrentDeployment(ctx context.Context, serverID int64) (Deployment, error)
	Deployment(ctx context.Context, serverID, deploymentID int64) (Deployment, error)
	// Deployments lists the server's deployments, newest first.
	Deployments(ctx context.Context, serverID int64, limit int) ([]Deployment, error)
	// ClearDeployments hides every deployment of the server from its
	// current status, cancels a running one (task cancelled; its agent
	// gets ErrGone) and sets the boot to rescue. It returns the cancelled
	// deployment's id, 0 if none ran, or ErrNotFound if there was nothing
	// to clear.
	ClearDeployments(ctx context.Context, serverID int64, now time.Time) (int64, error)
	Task(ctx context.Context, serverID, taskID int64) (Task, error)
	// Tasks lists the ids of the server's tasks, oldest first; only those
	// of function and of status when they are not empty.
	Tasks(ctx context.Context, serverID int64, function, status string) ([]int64, error)
	// CreateTask creates a task of no deployment (t.DeploymentID is
	// ignored: 0), e.g. a reboot request's, with t's function, status and
	// StartDate (also its LastUpdate); it returns it with its id. A
	// hardReboot while another of the server's is still init, todo or
	// doing is refused with *TaskRunningError (naming that one).
	CreateTask(ctx context.Context, t Task) (Task, error)
	// FinishTasks ends the server's tasks of function that are still
	// init, todo or doing and started before now: status done, done at
	// now. It returns how many it ended; each is ended once across all
	// instances.
	FinishTasks(ctx context.Context, serverID int64, function string, now time.Time) (int, error)
	// History returns up to limit entries of a deployment with N > after.
	History(ctx context.Context, deploymentID, after int64, limit int) ([]Entry, error)

	// The agent's side.

	// RunningDeployment is the server's deployment in progress and its
	// sealed job, or ErrNotFound.
	RunningDeployment(ctx context.Context, serverID int64) (Deployment, []byte, error)
	// OpenAttempt opens the next attempt of a running deployment (task
	// doing; a second or later attempt is recorded in the history); ErrGone
	// when it has ended, and *AttemptsExhaustedError (an ErrGone) when it
	// had its MaxAttempts: the deployment is failed then. It disarms
	// the server's network boot (ArmedRescue: the rescue is there).
	OpenAttempt(ctx context.Context, serverID, deploymentID int64, now time.Time) (int, error)
	// AppendEvents stores a batch (idempotent by (deployment, attempt,
	// seq)), moves the deployment on, and on a final event ends it and
	// its task. A heartbeat (no events) only refreshes LastSeen. Errors:
	// ErrNotFound, *StaleAttemptError, ErrGone. A repeat of the final
	// batch after the deployment ended is acknowledged again.
	AppendEvents(ctx context.Context, a Append) (Ack, error)

	// ExpireSilent fails running deployments whose agent has been silent
	// since before silentCutoff, and (when pickupCutoff is not zero) those
	// created before pickupCutoff that no agent picked up. Each is failed
	// exactly once across all instances sharing the database.
	ExpireSilent(ctx context.Context, now, silentCutoff, pickupCutoff time.Time, silentFor, pickupFor time.Duration) ([]Expired, error)

	// Fleet-wide figures, for the metrics (issue 28).

	// FleetCounts counts servers, running deployments and tasks by
	// status across the whole database: every instance reads the same
	// numbers (the metrics export them with max across instances, not a
	// sum).
	FleetCounts(ctx context.Context, seenSince time.Time) (FleetCounts, error)
	// DeploymentJob is the sealed job of one of the server's deployments,
	// running or ended, or ErrNotFound.
	DeploymentJob(ctx context.Context, serverID, deploymentID int64) ([]byte, error)

	// Power through the server's BMC (power.go).
	Power

	Close() error
}

// FleetCounts is the fleet as the database has it (FleetCounts).
type FleetCounts struct {
	Servers int64
	// Running deployments: Waiting for an agent (no attempt opened yet),
	// Active (an attempt opened), and of those Heartbeating: their agent
	// was heard since seenSince.
	Waiting, Active, Heartbeating int64
	// Tasks counts every deployment's task by status (init doing done
	// customerError ovhError cancelled), since the database began.
	Tasks map[string]int64
}

// TaskStatusFor is the task status of a deployment that ended with status
// and code.
func TaskStatusFor(status string, code job.Code) string {
	switch status {
	case StatusDone:
		return TaskDone
	case StatusCancelled:
		return TaskCancelled
	case StatusError:
		if job.FaultOf(code) == job.FaultCustomer {
			return TaskCustomerError
		}
		return TaskOVHError
	}
	return TaskDoing
}

// RestartedEntry is the history entry of attempt n > 1.
func RestartedEntry(n int, now time.Time) job.Event {
	return job.Event{Time: now, Status: job.StatusDoing, Kind: job.KindWarning, Code: job.MsgRestarted, Message: job.Text(job.MsgRestarted, n)}
}

// CreatedEntry is the first history entry of a deployment.
func CreatedEntry(now time.Time) job.Event {
	return job.Event{Time: now, Status: job.StatusDoing, Kind: job.KindInfo, Code: job.MsgWaitingAgent, Message: job.Text(job.MsgWaitingAgent)}
}

// SilentEntry ends a deployment whose agent went silent for d.
func SilentEntry(d time.Duration, now time.Time) job.Event {
	return job.Event{Time: now, Status: job.StatusError, Kind: job.KindInfo, Code: job.AgentSilent, Message: job.Text(job.AgentSilent, d.String())}
}

// PickupEntry ends a deployment no agent picked up within d.
func PickupEntry(d time.Duration, now time.Time) job.Event {
	return job.Event{Time: now, Status: job.StatusError, Kind: job.KindInfo, Code: job.APIPickupTimeout, Message: job.Text(job.APIPickupTimeout, d.String())}
}

// ExhaustedEntry ends a deployment whose agent restarted max times.
func ExhaustedEntry(max int, now time.Time) job.Event {
	return job.Event{Time: now, Status: job.StatusError, Kind: job.KindInfo, Code: job.APIAttemptsExhausted, Message: job.Text(job.APIAttemptsExhausted, max)}
}

// CancelledEntry ends a deployment erased by the customer.
func CancelledEntry(now time.Time) job.Event {
	return job.Event{Time: now, Status: job.StatusError, Kind: job.KindInfo, Code: job.MsgCancelled, Message: job.Text(job.MsgCancelled)}
}

// Rate is bytes per second between two progress points of the same step.
func Rate(prevStep job.Step, prevBytes int64, prevTime time.Time, e job.Event) float64 {
	if e.Kind != job.KindProgress || prevStep != e.Step || prevTime.IsZero() || !e.Time.After(prevTime) || e.BytesDone < prevBytes {
		return 0
	}
	return float64(e.BytesDone-prevBytes) / e.Time.Sub(prevTime).Seconds()
}
