package ova

import (
	"context"
	"fmt"
	"io"

	"github.com/byoi/byoi/imaging/vmdk"
)

// grainJob is one grain on its way from the stream to the target.
type grainJob struct {
	g    vmdk.Grain
	out  []byte // the grain's bytes in the disk, cut at the capacity
	err  error
	done chan struct{}
}

// pipeline moves the grains of a disk member from the stream (one
// reader: the tar walk) through workers inflating compressed grains in
// parallel to the writer, in stream order. A fixed pool of jobs bounds the
// memory: about 16 MiB of grain buffers.
type pipeline struct {
	ds      *diskMember
	workers int
	pool    chan *grainJob // jobs free for reuse
	jobs    int            // jobs allocated so far, at most cap(pool)
	infl    vmdk.Inflater  // the prelude's, in the caller's goroutine
}

// grainMemory is the memory the jobs' buffers may take.
const grainMemory = 16 << 20

func newPipeline(ds *diskMember, workers int) *pipeline {
	gb := ds.GrainBytes()
	per := gb + ds.MaxCompressed()
	n := int(min(max(grainMemory/per, int64(2*workers+2)), 256))
	return &pipeline{ds: ds, workers: workers, pool: make(chan *grainJob, n)}
}

// get returns a free job, allocating one while fewer than cap(pool)
// exist (a small disk needs few), else waiting for one; nil when ctx is
// done first. Only the reader (one goroutine at a time) calls it.
func (p *pipeline) get(ctx context.Context) *grainJob {
	select {
	case j := <-p.pool:
		return j
	default:
	}
	if p.jobs < cap(p.pool) {
		p.jobs++
		j := &grainJob{}
		j.g.Data = make([]byte, 0, p.ds.GrainBytes())
		if p.ds.Info().Compressed {
			j.g.Comp = make([]byte, 0, p.ds.MaxCompressed())
		}
		return j
	}
	select {
	case j := <-p.pool:
		return j
	case <-ctx.Done():
		return nil
	}
}

// decode makes j.out: the inflated grain, or the raw one.
func (p *pipeline) decode(infl *vmdk.Inflater, j *grainJob) error {
	g := &j.g
	want := min(p.ds.GrainBytes(), p.ds.Info().Capacity-g.Off)
	if !g.Compressed {
		j.out = g.Data
		return nil
	}
	buf := g.Data[:p.ds.GrainBytes()]
	n, err := infl.Inflate(buf, g.Comp)
	if err != nil {
		return &vmdk.Error{Reason: fmt.Sprintf("grain at byte %d of the disk: corrupt compressed data", g.Off), Err: err}
	}
	if int64(n) < want {
		return &vmdk.Error{Reason: fmt.Sprintf("grain at byte %d of the disk inflates to %d bytes, want %d", g.Off, n, want)}
	}
	j.out = buf[:want] // a last grain may carry bytes past the capacity
	return nil
}

// prelude reads the grains that land in the head (no I/O) up to the first
// grain that does not, and the grain after it: it returns their jobs
// (pending, to be written in that order), none when the whole disk is the
// head (a disk of at most 1 MiB). headKnown tells whether the partition
// table's bytes (the first 4608: an MBR, and a GPT header at 512 or 4096)
// came by then, or will not come: the grains came in ascending order so
// far, the one after the first past the head included (a stream whose
// first grain is its last, VMware's reverse order, is not ascending).
func (p *pipeline) prelude(xw *extentWriter) (pending []*grainJob, headKnown bool, err error) {
	covered := func(off int64) bool { return off >= p.ds.Info().Capacity || p.ds.HasGrain(off/p.ds.GrainBytes()) }
	// Writers stream grains in ascending order and leave out grains of
	// zeros: a stream ascending so far has brought every grain of the
	// head it has. Only another order leaves the head undecided.
	ascending, last := true, int64(-1)
	// hold puts a grain of the head into it; it reports false for one
	// past the head, left in its job.
	hold := func(j *grainJob) (bool, error) {
		if j.g.Off <= last {
			ascending = false
		}
		last = j.g.Off
		n := min(p.ds.GrainBytes(), p.ds.Info().Capacity-j.g.Off)
		if !xw.held(j.g.Off, n) {
			return false, nil
		}
		if err := p.decode(&p.infl, j); err != nil {
			return true, err
		}
		if err := xw.put(j.g.Off, j.out); err != nil {
			return true, err
		}
		p.pool <- j
		return true, nil
	}
	for {
		j := p.get(context.Background()) // a job is free here: never blocks
		err := p.ds.Next(&j.g)
		if err == io.EOF {
			p.pool <- j
			return pending, true, nil
		}
		if err != nil {
			return nil, false, err
		}
		held, err := hold(j)
		if err != nil {
			return nil, false, err
		}
		if held {
			if len(pending) > 0 { // the grain after the first past the head
				return pending, ascending || (covered(0) && covered(4096)), nil
			}
			continue
		}
		pending = append(pending, j)
		if len(pending) == 2 {
			return pending, ascending || (covered(0) && covered(4096)), nil
		}
	}
}

// run streams the rest of the disk (from pending, the jobs prelude
// stopped at) onto xw, then reads the rest of the archive (w.rest) in the reader
// goroutine while the writer finishes. It returns the first error: the
// reader's (source, refusals, manifest), a worker's (corrupt grains) or
// the writer's (the target's errors). From here on the reader goroutine
// owns w, and closes it; on failure it may still be blocked in src.Read
// when run returns (close src to release it).
func (p *pipeline) run(ctx context.Context, w *walker, xw *extentWriter, pending []*grainJob) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	n := cap(p.pool)
	work := make(chan *grainJob, n)
	order := make(chan *grainJob, n)
	var readErr error

	send := func(j *grainJob) {
		j.done = make(chan struct{})
		j.err, j.out = nil, nil
		if j.g.Compressed {
			work <- j // buffered for every job: never blocks
		} else {
			j.out = j.g.Data
			close(j.done)
		}
		order <- j
	}
	go func() {
		defer func() {
			w.close()
			close(work)
			close(order)
		}()
		fail := func(err error) {
			readErr = err
			cancel(err)
		}
		for _, j := range pending {
			send(j)
		}
		for {
			j := p.get(ctx)
			if j == nil {
				return
			}
			err := p.ds.Next(&j.g)
			if err == io.EOF {
				break
			}
			if err != nil {
				fail(w.tarErr(err))
				return
			}
			send(j)
		}
		if err := w.finishDisk(p.ds); err != nil {
			fail(w.tarErr(err))
			return
		}
		if err := w.rest(); err != nil {
			fail(err)
		}
	}()
	for range p.workers {
		go func() {
			var infl vmdk.Inflater
			for j := range work {
				if ctx.Err() != nil {
					j.err = context.Cause(ctx)
				} else {
					j.err = p.decode(&infl, j)
				}
				close(j.done)
			}
		}()
	}

	for j := range order {
		select {
		case <-j.done:
		case <-ctx.Done():
			return context.Cause(ctx)
		}
		if j.err != nil {
			cancel(j.err)
			return j.err
		}
		if err := xw.put(j.g.Off, j.out); err != nil {
			cancel(err)
			return err
		}
		p.pool <- j
	}
	// order is closed: the reader is done and readErr is set.
	if readErr != nil {
		return readErr
	}
	if err := ctx.Err(); err != nil {
		return context.Cause(ctx)
	}
	return nil
}
