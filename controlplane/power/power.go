// Package power drives a server's power through its BMC: the power state,
// power on, off and cycle, and a one-time boot-device override to the
// network. byoi-api uses it to boot a server into the rescue system and back
// to its disk without hands.
//
// Drivers: None (no BMC: someone reboots the server by hand; every call
// returns ErrNoBMC) and IPMI (IPMI 2.0 over LAN, "lanplus", RMCP+, with
// github.com/bougou/go-ipmi). The package imports no disk code.
//
// Every BMC call is bounded: each datagram has a timeout and a few
// retransmissions, each operation a deadline (Options.OpTimeout, or the
// caller's context if sooner), and a failed operation is retried with
// backoff only when that is safe (never after a refused login: BMCs lock
// accounts; never a power cycle the BMC may already have done). Failures are
// *Error values of four kinds the caller maps to catalog messages: ErrUnreachable,
// ErrCredentials, ErrTimeout and ErrUnsupported (and ErrFailed for any
// other refusal). No password ever appears in an error, a log line or the
// String of a driver.
package power

import (
	"context"
	"errors"
	"time"

	"github.com/byoi/byoi/job"
)

// State is a server's power state, in OVH's words (powerState of
// GET /dedicated/server/{sn}).
type State string

const (
	On  State = "poweron"
	Off State = "poweroff"
)

// BootMode is how the server's firmware boots, as the rescue agent's
// inventory reports it. It decides the boot type of the override: EFI on
// UEFI servers, so that a UEFI server is not switched to legacy boot.
type BootMode int

const (
	BootLegacy BootMode = iota // BIOS, "PC compatible"
	BootUEFI                   // EFI boot type in the boot flags
)

func (m BootMode) String() string {
	if m == BootUEFI {
		return "uefi"
	}
	return "legacy"
}

// Op names a BMC operation, in errors and logs.
type Op string

const (
	OpStatus       Op = "power status"
	OpOn           Op = "power on"
	OpOff          Op = "power off"
	OpCycle        Op = "power cycle"
	OpBootOverride Op = "boot device override"
)

// Driver is a server's power control. Implementations are safe for
// concurrent use; each call opens and closes its own BMC session.
type Driver interface {
	// Kind is the driver's name: "none" or "ipmi".
	Kind() string
	// Status reads the power state.
	Status(ctx context.Context) (State, error)
	// On powers the server on (a server already on stays on).
	On(ctx context.Context) error
	// Off powers the server off at once (not a graceful shutdown).
	Off(ctx context.Context) error
	// Cycle powers the server off and on again. BMCs may refuse it when
	// the server is off: Reboot checks the state first.
	Cycle(ctx context.Context) error
	// BootFromNetwork sets the next boot, and only the next one, to PXE
	// (the EFI boot type on a UEFI server). It is never persistent: a
	// persistent override rewrites BootOrder on many BMCs. A BMC that
	// refuses it returns an *Error of kind ErrUnsupported or ErrFailed.
	BootFromNetwork(ctx context.Context, mode BootMode) error
	// String describes the driver without secrets, e.g.
	// "ipmi://admin@10.0.0.5:623".
	String() string
}

// Kinds of failure. Test them with errors.Is; the *Error carries the
// catalog code (job.Describe finds it).
var (
	// ErrNoBMC: the server has no BMC (driver none): someone must
	// reboot it by hand.
	ErrNoBMC = errors.New("the server has no BMC")
	// ErrUnreachable: nothing answered (connection refused, no route, a
	// name that does not resolve, or silence until the deadline).
	ErrUnreachable = errors.New("BMC unreachable")
	// ErrCredentials: the BMC refused the user name, the password, or the
	// privilege the operation needs.
	ErrCredentials = errors.New("BMC credentials refused")
	// ErrTimeout: the BMC answered the login but an operation did not
	// complete in time.
	ErrTimeout = errors.New("BMC timeout")
	// ErrUnsupported: the BMC does not implement the operation (invalid
	// command, invalid data field, parameter not supported...).
	ErrUnsupported = errors.New("not supported by the BMC")
	// ErrFailed: the BMC answered with another error.
	ErrFailed = errors.New("BMC operation failed")
)

// Error is a failed BMC operation. Error() is the customer-facing catalog
// text; Detail is in byoi's own words (never the library's text, never a
// password); Err, the cause, is for errors.Is/As (net errors, contexts).
type Error struct {
	Kind    error         // one of ErrUnreachable, ErrCredentials, ErrTimeout, ErrUnsupported, ErrFailed
	Op      Op            // what was attempted
	Detail  string        // what the BMC said or why, e.g. "completion code 0xcc (invalid data field)"
	Timeout time.Duration // the bound that expired (ErrTimeout, ErrUnreachable)
	Err     error         // the cause, possibly nil
}

// MessageCode returns the catalog code of the failure.
func (e *Error) MessageCode() job.Code {
	switch e.Kind {
	case ErrUnreachable:
		return job.PowerNoAnswer
	case ErrCredentials:
		return job.PowerCredentials
	case ErrTimeout:
		return job.PowerTimeout
	case ErrUnsupported:
		return job.PowerUnsupported
	default:
		return job.PowerFailed
	}
}

func (e *Error) Error() string {
	switch e.Kind {
	case ErrUnreachable, ErrCredentials:
		return job.Text(e.MessageCode(), string(e.Op))
	case ErrTimeout:
		return job.Text(job.PowerTimeout, string(e.Op), e.Timeout.String())
	default:
		return job.Text(e.MessageCode(), string(e.Op), e.Detail)
	}
}

// Is makes errors.Is(err, ErrTimeout) and the like work.
func (e *Error) Is(target error) bool { return target == e.Kind }

// Unwrap returns the cause.
func (e *Error) Unwrap() error { return e.Err }

// Action is what Reboot did to the power.
type Action string

const (
	ActionCycled    Action = "cycled"     // the server was on: power cycle
	ActionPoweredOn Action = "powered on" // the server was off: power on
)

// Override is what became of the one-time boot override.
type Override string

const (
	OverrideSet     Override = "set"     // the BMC accepted it
	OverrideRefused Override = "refused" // the BMC refused it: the server boots in its own order
)

// Outcome is what Reboot did.
type Outcome struct {
	Action      Action
	Override    Override
	OverrideErr error // why the override was refused (an *Error), when it was
	Before      State // the power state found before acting
}

// Warning returns the catalog warning to record when the override was
// refused (job.WarnBootOverride and its text), or "" and "".
func (o Outcome) Warning() (job.Code, string) {
	if o.Override != OverrideRefused {
		return "", ""
	}
	detail := "refused"
	var pe *Error
	if errors.As(o.OverrideErr, &pe) && pe.Detail != "" {
		detail = pe.Detail
	}
	return job.WarnBootOverride, job.Text(job.WarnBootOverride, detail)
}

// Reboot boots the server from the network: the one-time PXE override
// (tolerated when the BMC refuses it: byoi's servers boot from the network
// first anyway, the override only makes sure), then a power cycle, or a
// power on when the server is off. A BMC that does not answer or refuses
// the login fails Reboot before the power is touched.
func Reboot(ctx context.Context, d Driver, mode BootMode) (Outcome, error) {
	var out Outcome
	err := d.BootFromNetwork(ctx, mode)
	switch {
	case err == nil:
		out.Override = OverrideSet
	case errors.Is(err, ErrUnsupported) || errors.Is(err, ErrFailed):
		out.Override, out.OverrideErr = OverrideRefused, err
	default:
		return out, err
	}
	st, err := d.Status(ctx)
	if err != nil {
		return out, err
	}
	out.Before = st
	if st == Off {
		out.Action = ActionPoweredOn
		return out, d.On(ctx)
	}
	out.Action = ActionCycled
	return out, d.Cycle(ctx)
}

// None is the driver of a server without a BMC: every operation returns
// ErrNoBMC, and the control plane keeps today's behaviour (the server waits
// to be rebooted by hand).
type None struct{}

func (None) Kind() string                                    { return DriverNone }
func (None) Status(context.Context) (State, error)           { return "", ErrNoBMC }
func (None) On(context.Context) error                        { return ErrNoBMC }
func (None) Off(context.Context) error                       { return ErrNoBMC }
func (None) Cycle(context.Context) error                     { return ErrNoBMC }
func (None) BootFromNetwork(context.Context, BootMode) error { return ErrNoBMC }
func (None) String() string                                  { return DriverNone }

// New returns the driver for spec: None for "none", an IPMI driver for
// "ipmi://...". pw is the BMC password (ignored for none).
func New(spec BMC, pw Password, opts Options) (Driver, error) {
	switch spec.Driver {
	case DriverNone, "":
		return None{}, nil
	case DriverIPMI:
		return NewIPMI(spec, pw, opts)
	default:
		return nil, badSpec("unknown driver")
	}
}
