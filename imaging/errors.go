package imaging

import (
	"errors"
	"fmt"

	"github.com/byoi/byoi/job"
	"github.com/byoi/byoi/partition"
)

// ErrFormat is matched (errors.Is) by every error about the image's format:
// a *FormatError, or an unsupported declared type.
var ErrFormat = errors.New("image format")

// FormatError is an image whose real format does not fit the declared
// type. Its message is the one OVH users know (reference/API.md).
type FormatError struct {
	// Declared is the type the job declared: "raw" or "qcow2".
	Declared string
	// Found is what the image looks like.
	Found Format
	// NoTable: declared raw, but no partition table was found.
	NoTable bool
}

func (e *FormatError) Error() string {
	if e.NoTable {
		return job.Text(job.NoPartitionTable, describe(e.Found))
	}
	return job.Text(job.FormatMismatch, e.Found, e.Declared)
}

// MessageCode returns the catalog code.
func (e *FormatError) MessageCode() job.Code {
	if e.NoTable {
		return job.NoPartitionTable
	}
	return job.FormatMismatch
}

// Is makes errors.Is(err, ErrFormat) true.
func (e *FormatError) Is(target error) bool { return target == ErrFormat }

// describe names what an image seems to contain, for a user.
func describe(f Format) string {
	switch f {
	case FormatUnknown, "":
		return "unknown data"
	case FormatEmpty:
		return "only zeros"
	}
	return string(f)
}

// SizeError is an image larger than the target disk. ImageSize is the
// declared size, or, for a stream of unknown size, the bytes seen when it
// passed the end of the target.
type SizeError struct {
	ImageSize  int64
	TargetName string
	TargetSize int64
}

func (e *SizeError) Error() string {
	name := e.TargetName
	if name == "" {
		name = "the target disk"
	}
	return job.Text(job.ImageTooLarge, e.ImageSize, name, e.TargetSize)
}

// MessageCode returns the catalog code.
func (e *SizeError) MessageCode() job.Code { return job.ImageTooLarge }

// WriteError is a failure to write the image to the target (Format is
// "raw" or "qcow2"). The target has been wiped of partition tables.
type WriteError struct {
	Format string
	Err    error
}

func (e *WriteError) Error() string {
	msg := job.Text(job.WriteFailed, e.Format)
	if e.Err != nil {
		msg += " " + e.Err.Error()
	}
	return msg
}

// MessageCode returns the catalog code.
func (e *WriteError) MessageCode() job.Code { return job.WriteFailed }

func (e *WriteError) Unwrap() error { return e.Err }

// CheckFormat sniffs head (the first bytes of the image, up to HeadSize)
// and checks it against the declared type. A declared "raw" must hold a
// partition table; a declared "qcow2" must be qcow2. It returns what the
// image is, and a *FormatError when that does not fit.
func CheckFormat(declared string, head []byte) (Format, error) {
	found := Sniff(head)
	switch declared {
	case string(FormatRaw):
		if found == FormatRaw {
			// Examine's verdict: a table Linux would read otherwise is
			// refused here, before anything is written.
			if _, err := partition.Examine(head); err != nil {
				return found, err
			}
			return found, nil
		}
		if found == FormatQcow2 {
			// The other type byoi accepts: the job most likely has the
			// wrong type, say so.
			return found, &FormatError{Declared: declared, Found: found}
		}
		return found, &FormatError{Declared: declared, Found: found, NoTable: true}
	case string(FormatQcow2):
		if found == FormatQcow2 {
			return found, nil
		}
		return found, &FormatError{Declared: declared, Found: found}
	}
	return found, fmt.Errorf("%w: unsupported image type %q, expected qcow2 or raw", ErrFormat, declared)
}
