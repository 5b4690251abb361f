package fetch

import (
	"errors"
	"net/url"
	"slices"
	"strings"

	"github.com/byoi/byoi/job"
)

// Source is a place the image is read from before its own URL
// (Options.Before): the control plane's image cache (issue 28). The
// Stream reads the first source; when a source fails for good (a final
// HTTP status such as 404, or its retries used up), the next one takes over
// at the byte reached, with a Range request, and the last one is the
// image's own URL with the job's headers. The bytes are delivered once and
// in order whatever the sources, so a consumer's checksum covers them all;
// a source that disagrees about the size is refused (ErrResumeRefused), as
// a changed file is. Each source gets its own retries.
type Source struct {
	// Name says what the source is, in logs and OnSourceFailed.
	Name string
	URL  string
	// Headers are sent to this source only: the job's headers go to the
	// image's own URL only. Their values are secrets, as the job's are.
	Headers []job.Header
	// OnRetry, when set, replaces Options.OnRetry while this source
	// is read.
	OnRetry func(retry, maxRetries int, offset int64)
}

// sourceState is the Stream's list of sources and the one in use.
type sourceState struct {
	list []Source // Before, then the image's own URL; empty without Before
	cur  int
}

// initSources puts Options.Before in front of the image's own URL and
// starts with the first; their header values and URL queries are secrets
// too.
func (s *Stream) initSources() {
	if len(s.opts.Before) == 0 {
		return
	}
	own := Source{Name: "the image's URL", URL: s.rawURL, Headers: s.opts.Headers, OnRetry: s.opts.OnRetry}
	s.src.list = append(slices.Clone(s.opts.Before), own)
	for _, b := range s.opts.Before {
		for _, h := range b.Headers {
			s.secrets = append(s.secrets, h.Value)
			if _, rest, ok := strings.Cut(h.Value, " "); ok {
				s.secrets = append(s.secrets, rest) // "Bearer TOKEN": the token alone
			}
		}
		if u, err := url.Parse(b.URL); err == nil {
			s.secrets = append(s.secrets, u.RawQuery)
		}
	}
	s.use(0)
}

// use switches the Stream to source i.
func (s *Stream) use(i int) {
	src := s.src.list[i]
	s.src.cur = i
	s.rawURL, s.redacted, s.opts.Headers = src.URL, job.RedactURL(src.URL), src.Headers
	// The next source's validators are its own.
	s.etag, s.lastMod = "", ""
	s.failures = 0
}

// onRetry is the retry callback of the source in use.
func (s *Stream) onRetry() func(retry, maxRetries int, offset int64) {
	if len(s.src.list) > 0 {
		if f := s.src.list[s.src.cur].OnRetry; f != nil {
			return f
		}
	}
	return s.opts.OnRetry
}

// nextSource moves to the next source after the final error err of the
// current one; false when there is none, or when err is not the source's
// fault (the context, the end of the image, a closed stream).
func (s *Stream) nextSource(err error) bool {
	if s.src.cur+1 >= len(s.src.list) || errors.Is(err, errComplete) || errors.Is(err, errClosed) || s.ctx.Err() != nil {
		return false
	}
	from, off := s.src.list[s.src.cur], s.offset.Load()
	s.log.Warn("download source given up: the next one takes over", "source", from.Name, "next", s.src.list[s.src.cur+1].Name,
		"offset", off, "err", s.scrub(err.Error()))
	s.use(s.src.cur + 1)
	if s.opts.OnSourceFailed != nil {
		s.opts.OnSourceFailed(from.Name, off)
	}
	return true
}
