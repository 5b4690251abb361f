package controlplane

import (
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/byoi/byoi/job"
)

// Request bodies are read only once the request is authenticated as far
// as it can be without them (server.go's run), within a deadline of their
// own, into memory that all requests share a budget of.

// budget is the memory of bodies in flight, for every request together.
type budget struct {
	mu        sync.Mutex
	free, max int64
}

func newBudget(max int64) *budget { return &budget{free: max, max: max} }

// take reserves n bytes, or reports that there are not that many free.
func (b *budget) take(n int64) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if n > b.free {
		return false
	}
	b.free -= n
	return true
}

func (b *budget) give(n int64) {
	b.mu.Lock()
	b.free += n
	b.mu.Unlock()
}

// BodyMemoryInUse is the memory request bodies hold now (bytes).
func (s *Server) BodyMemoryInUse() int64 { return s.mem.inUse() }

// inUse is the budget taken now.
func (b *budget) inUse() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.max - b.free
}

// bodyTimeout is how long a body of size bytes may take to arrive.
func (s *Server) bodyTimeout(size int64) time.Duration {
	return s.cfg.BodyTimeout + time.Duration(size/s.cfg.BodyMinRate)*time.Second
}

// readBody reads r's body, at most limit bytes, within bodyTimeout, into
// memory taken from the budget (release gives it back, also after an
// error), writing what arrives to hash when not nil. Errors: a
// *http.MaxBytesError, APIBusy (the budget is spent), APIBodyTimeout, or a
// bad request.
func (s *Server) readBody(w http.ResponseWriter, r *http.Request, limit int64, hash io.Writer) (body []byte, release func(), err error) {
	var held int64
	release = func() {
		s.mem.give(held)
		held = 0
	}
	if r.Body == nil || r.Body == http.NoBody {
		return nil, release, nil
	}
	size := limit
	if r.ContentLength >= 0 && r.ContentLength < limit {
		size = r.ContentLength
	}
	d := s.bodyTimeout(size)
	rc := http.NewResponseController(w)
	if rc.SetReadDeadline(time.Now().Add(d)) == nil {
		defer rc.SetReadDeadline(time.Time{})
	}
	// The first buffer: the whole declared body (and room to see its
	// end), else 4 KiB, doubled as it fills.
	first := int64(4 << 10)
	if r.ContentLength >= 0 {
		first = size + 1
	}
	first = min(first, limit+1)
	if !s.mem.take(first) {
		return nil, release, fail(kBusy, job.APIBusy)
	}
	held = first
	buf := make([]byte, 0, first)
	rd := http.MaxBytesReader(w, r.Body, limit)
	for {
		if len(buf) == cap(buf) {
			grow := min(int64(cap(buf)), limit+1-int64(cap(buf)))
			if grow <= 0 {
				grow = 1 // MaxBytesReader refuses the next byte
			}
			if !s.mem.take(grow) {
				return nil, release, fail(kBusy, job.APIBusy)
			}
			held += grow
			nb := make([]byte, len(buf), int64(cap(buf))+grow)
			copy(nb, buf)
			buf = nb
		}
		n, err := rd.Read(buf[len(buf):cap(buf)])
		if n > 0 && hash != nil {
			hash.Write(buf[len(buf) : len(buf)+n])
		}
		buf = buf[:len(buf)+n]
		if err == io.EOF {
			return buf, release, nil
		}
		if err != nil {
			var mb *http.MaxBytesError
			var ne net.Error
			switch {
			case errors.As(err, &mb):
				return nil, release, err
			case errors.Is(err, os.ErrDeadlineExceeded) || errors.As(err, &ne) && ne.Timeout():
				return nil, release, fail(kBodyTimeout, job.APIBodyTimeout, d.String())
			}
			return nil, release, fail(kBadRequest, job.APIBadRequest, "request body could not be read")
		}
	}
}

// ReadBody reads a body for the Control Panel's own endpoints with the
// same deadline and memory budget, answering a refusal itself (ok false).
// release gives the memory back.
func (s *Server) ReadBody(w http.ResponseWriter, r *http.Request, limit int64) (body []byte, release func(), ok bool) {
	body, release, err := s.readBody(w, r, limit, nil)
	if err != nil {
		w.Header().Set("Connection", "close")
		status, b, _ := describe(err)
		writeJSON(w, status, b)
		return nil, release, false
	}
	return body, release, true
}
