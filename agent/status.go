package agent

import (
	"errors"
	"fmt"
	"log/slog"

	"github.com/byoi/byoi/imaging"
)

// Status values, as OVH's API shows them to customers.
const (
	StatusDoing = "doing"
	StatusDone  = "done"
	StatusError = "error"
)

// Steps of the pipeline, in order.
const (
	StepPreflight   = "preflight"
	StepFetch       = "fetch"
	StepVerify      = "verify"
	StepWrite       = "write"
	StepPartition   = "partition"
	StepConfigDrive = "configdrive"
	StepFinish      = "finish"
)

// Event is one status report: what the agent sends to the control plane and
// what `byoi deploy --json` prints, one per line. Message never holds a
// secret (header values, user data).
type Event struct {
	Status     string `json:"status"`
	Step       string `json:"step"`
	Message    string `json:"message"`
	BytesDone  int64  `json:"bytesDone"`
	BytesTotal int64  `json:"bytesTotal"`
}

// Reporter receives status events. It is called from the pipeline's
// goroutines, one call at a time, and must not block for long.
type Reporter func(Event)

// UserMessage maps an error of the pipeline to the one message a customer
// sees, in OVH's words where OVH has them. Every typed error of the lower
// packages already carries its user-facing text, so this is the one place
// that decides which layer's text wins.
func UserMessage(err error) string {
	if err == nil {
		return ""
	}
	var (
		ve *ValidationError
		de *imaging.DownloadError
		ce *imaging.ChecksumError
		fe *imaging.FormatError
		se *imaging.SizeError
		we *imaging.WriteError
		te *imaging.TooBigError
		ue *UserError
	)
	switch {
	case errors.As(err, &ue):
		return ue.Error()
	case errors.As(err, &ve):
		return ve.Error()
	case errors.As(err, &ce):
		return ce.Error()
	case errors.As(err, &de):
		return de.Error()
	case errors.As(err, &fe):
		return fe.Error()
	case errors.As(err, &se):
		return se.Error()
	case errors.As(err, &te):
		return te.Error()
	case errors.As(err, &we):
		return we.Error()
	}
	return err.Error()
}

// UserError is an error whose text is what the customer sees: Message is an
// OVH-style sentence, Err the cause appended to it.
type UserError struct {
	Message string
	Err     error
}

func (e *UserError) Error() string {
	if e.Err == nil {
		return e.Message
	}
	return e.Message + " " + e.Err.Error()
}

func (e *UserError) Unwrap() error { return e.Err }

func userErr(msg string, err error) error { return &UserError{Message: msg, Err: err} }

// logAttrsErr is a log attribute for an error that is safe to log: the
// lower packages never put secrets in errors, and this is the only form in
// which errors reach the log.
func logAttrsErr(err error) slog.Attr { return slog.String("error", fmt.Sprint(err)) }
