package main

import (
	"fmt"
	"io"
	"os"
)

// maxCACertSize bounds --ca-cert: a PEM bundle of every public root is
// about 200 KiB.
const maxCACertSize = 4 << 20

// readLimited reads a local input file (a job, user data, CA certificates)
// through a limit: a file larger than max, or an endless one such as
// /dev/zero, is an error after reading at most max+1 bytes, never a
// process that grows without bound.
func readLimited(path string, max int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return readAllLimited(f, max)
}

// readAllLimited reads r to its end, refusing more than max bytes.
func readAllLimited(r io.Reader, max int64) ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(r, max+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > max {
		return nil, fmt.Errorf("more than the %d MiB limit", max>>20)
	}
	return b, nil
}
