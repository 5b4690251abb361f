package agent

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/byoi/byoi/blockdev"
	"github.com/byoi/byoi/imaging"
	"github.com/byoi/byoi/imaging/decompress"
	"github.com/byoi/byoi/imaging/fetch"
	"github.com/byoi/byoi/imaging/ova"
	"github.com/byoi/byoi/imaging/qcow2"
	"github.com/byoi/byoi/imaging/vmdk"
	"github.com/byoi/byoi/job"
	"github.com/byoi/byoi/partition"
)

// What the customer reads of an error is decided here, once. The libraries
// (imaging and its format packages, partition, blockdev) return typed
// errors and sentinels and know no catalog code; job's own errors
// (validation) and the agent's carry theirs (job.Coded); catalogOf is the
// one table from the libraries' errors to the catalog. Every error a
// deployment returns goes through it: the step tracker tags each failure
// with its step (stepError), whose text and code are Describe's.

// Describe is the one mapping from an error of a deployment, an inspection
// or a CLI command to what the customer sees: its catalog code and text.
//
//   - An interruption (the deployment's context cancelled: SIGTERM, Ctrl-C,
//     the control plane) is said as such, with the step it stopped, whatever
//     error the step returned on its way out (a download cut by the
//     cancellation is not a download error): InterruptedStep.
//   - Otherwise the outermost error of the chain that has a code gives it:
//     a library error through catalogOf, or a job.Coded error.
//   - Anything else is Internal with the error's text (the libraries keep
//     secrets out of their errors).
func Describe(err error) (job.Code, string) {
	return describe(err, FailedStep(err))
}

// Message is Describe's text alone.
func Message(err error) string {
	_, m := Describe(err)
	return m
}

// describe is Describe for an error that happened in step ("" when not
// known).
func describe(err error, step job.Step) (job.Code, string) {
	if err == nil {
		return "", ""
	}
	if errors.Is(err, context.Canceled) {
		if step == "" {
			return job.Interrupted, job.Text(job.Interrupted)
		}
		return job.InterruptedStep, job.Text(job.InterruptedStep, step)
	}
	var code job.Code
	var msg string
	if walkChain(err, func(e error) bool {
		if _, ok := e.(*stepError); ok {
			return false // its code is this one's: look inside
		}
		if c, ok := e.(job.Coded); ok {
			code, msg = c.MessageCode(), c.Error()
			return true
		}
		if c, args, cause, ok := catalogOf(e); ok {
			code, msg = c, catalogText(c, args, cause)
			return true
		}
		return false
	}) {
		return code, msg
	}
	return job.Internal, err.Error()
}

// catalogOf is the table: the catalog code of a library's error, the
// code's arguments, and the cause whose text follows the message (nil for
// none). It looks at err itself, not at its chain.
func catalogOf(err error) (code job.Code, args []any, cause error, ok bool) {
	switch e := err.(type) {
	case *fetch.Error:
		return job.DownloadFailed, []any{e.URL}, e.Err, true
	case *imaging.FormatError:
		if e.NoTable {
			return job.NoPartitionTable, []any{seemsToHold(e.Found)}, nil, true
		}
		return job.FormatMismatch, []any{e.Found, e.Declared}, nil, true
	case *imaging.SizeError:
		name := e.TargetName
		if name == "" {
			name = "the target disk"
		}
		return job.ImageTooLarge, []any{e.ImageSize, name, e.TargetSize}, nil, true
	case *imaging.WriteError:
		return job.WriteFailed, []any{e.Format}, e.Err, true
	case *imaging.ChecksumError:
		return job.ChecksumMismatch, []any{e.Type, e.Got, e.Want}, nil, true
	case *qcow2.TooBigError:
		return job.Qcow2TooBig, nil, nil, true
	case *qcow2.Error:
		return job.Qcow2Refused, []any{reason(e.Reason, e.Err)}, nil, true
	case *vmdk.Error:
		return job.ImageRefused, []any{"VMDK", reason(e.Reason, e.Err)}, nil, true
	case *ova.Error:
		r := reason(e.Reason, e.Err)
		if e.Member != "" {
			r = fmt.Sprintf("%q: %s", e.Member, r)
		}
		return job.ImageRefused, []any{"OVA", r}, nil, true
	case *decompress.Error:
		return job.ImageRefused, []any{string(e.Format), reason(e.Reason, e.Err)}, nil, true
	case *ova.ManifestError:
		switch {
		case e.Reason != "" && e.Member != "":
			return job.ManifestRefused, []any{fmt.Sprintf("%q: %s", e.Member, e.Reason)}, nil, true
		case e.Reason != "":
			return job.ManifestRefused, []any{e.Reason}, nil, true
		}
		return job.ManifestMismatch, []any{e.Member, strings.ToLower(e.Algo), e.Got, e.Want}, nil, true
	case *partition.SectorSizeError:
		return job.SectorSizeMismatch, []any{e.ImageSectorSize, e.DiskSectorSize}, nil, true
	case *partition.RelocateError:
		return job.GPTRelocateFailed, nil, e.Err, true
	case *partition.TableError:
		return job.TableRefused, []any{e.Reason}, nil, true
	}
	switch err {
	case imaging.ErrChecksumType:
		return job.BadChecksumType, nil, nil, true
	case blockdev.ErrRereadDeferred:
		return job.WarnRereadDeferred, nil, nil, true
	}
	return "", nil, nil, false
}

// catalogText is the message of code with args, then the cause's text.
func catalogText(code job.Code, args []any, cause error) string {
	msg := job.Text(code, args...)
	if cause != nil {
		msg += " " + causeText(cause)
	}
	return msg
}

// causeText is the text of a cause appended to a message: its catalog
// message when it has one itself, else its own text.
func causeText(err error) string {
	if c, args, cause, ok := catalogOf(err); ok {
		return catalogText(c, args, cause)
	}
	if c, ok := err.(job.Coded); ok {
		return c.Error()
	}
	return err.Error()
}

// reason is a refusal's reason with its cause.
func reason(r string, err error) string {
	if err != nil {
		return r + ": " + err.Error()
	}
	return r
}

// seemsToHold names what an image without a partition table seems to
// contain, for the customer.
func seemsToHold(f imaging.Format) string {
	switch f {
	case imaging.FormatUnknown, "":
		return "unknown data"
	case imaging.FormatEmpty:
		return "only zeros"
	}
	return string(f)
}

// walkChain calls visit on err and the errors it wraps, depth first in the
// order errors.As looks at them, until visit returns true (reported).
func walkChain(err error, visit func(error) bool) bool {
	for err != nil {
		if visit(err) {
			return true
		}
		switch u := err.(type) {
		case interface{ Unwrap() error }:
			err = u.Unwrap()
		case interface{ Unwrap() []error }:
			for _, e := range u.Unwrap() {
				if walkChain(e, visit) {
					return true
				}
			}
			return false
		default:
			return false
		}
	}
	return false
}
