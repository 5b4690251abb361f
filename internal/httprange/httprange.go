// Package httprange parses the Content-Range header of an HTTP answer to
// a Range request (RFC 9110 section 14.4). The agent's download
// (imaging/fetch) and the control plane's image cache both read it; the
// control plane carries no disk stack, so the rule lives here, in a
// package of the standard library only.
package httprange

import (
	"errors"
	"strconv"
	"strings"
)

// ErrBad is the error of a Content-Range header that is not "bytes
// start-end/total" with 0 <= start <= end < total (or total "*").
var ErrBad = errors.New("bad Content-Range header")

// Parse parses a Content-Range header, "bytes start-end/total"; an unknown
// total ("*") is returned as -1. The header's text is not quoted in the
// error: it comes from the server.
func Parse(v string) (start, end, total int64, err error) {
	rest, ok := strings.CutPrefix(strings.TrimSpace(v), "bytes ")
	if !ok {
		return 0, 0, 0, ErrBad
	}
	rng, tot, ok := strings.Cut(rest, "/")
	if !ok {
		return 0, 0, 0, ErrBad
	}
	a, b, ok := strings.Cut(rng, "-")
	if !ok {
		return 0, 0, 0, ErrBad
	}
	start, err1 := strconv.ParseInt(a, 10, 64)
	end, err2 := strconv.ParseInt(b, 10, 64)
	if err1 != nil || err2 != nil || start < 0 || end < start {
		return 0, 0, 0, ErrBad
	}
	total = -1
	if tot != "*" {
		t, err := strconv.ParseInt(tot, 10, 64)
		if err != nil || t <= end {
			return 0, 0, 0, ErrBad
		}
		total = t
	}
	return start, end, total, nil
}
