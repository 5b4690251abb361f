package imaging

import (
	"errors"
	"fmt"

	"github.com/byoi/byoi/partition"
)

// ErrFormat is matched (errors.Is) by every error about the image's format:
// a *FormatError, or an unsupported declared type.
var ErrFormat = errors.New("image format")

// FormatError is an image whose real format does not fit the declared
// type (the agent's error table gives the message OVH users know).
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
		return fmt.Sprintf("image declared %s holds no partition table (it looks like %s)", e.Declared, e.Found)
	}
	return fmt.Sprintf("image declared %s is %s", e.Declared, e.Found)
}

// Is makes errors.Is(err, ErrFormat) true.
func (e *FormatError) Is(target error) bool { return target == ErrFormat }

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
	return fmt.Sprintf("image of %d bytes does not fit %s (%d bytes)", e.ImageSize, name, e.TargetSize)
}

// WriteError is a failure to write the image to the target (Format is
// "raw", "qcow2" or "ova"), with the target's error.
type WriteError struct {
	Format string
	Err    error
}

func (e *WriteError) Error() string {
	if e.Err == nil {
		return "write the " + e.Format + " image"
	}
	return "write the " + e.Format + " image: " + e.Err.Error()
}

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
