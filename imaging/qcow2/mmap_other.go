//go:build !linux

package qcow2

import (
	"errors"
	"os"
)

// mapNoReserve is Linux's; elsewhere the mapping is reserved up front.
const mapNoReserve = 0

func newMemfd() (*os.File, error) { return nil, errors.New("memfd is Linux's") }
