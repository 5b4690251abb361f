package imaging

import (
	"context"
	"fmt"
	"io"
)

// ovaJob is one grain on its way from the stream to the target.
type ovaJob struct {
	g    vmdkGrain
	out  []byte // the grain's bytes in the disk, cut at the capacity
	err  error
	done chan struct{}
}

// ovaPipeline moves the grains of a disk member from the stream (one
// reader: the tar walk) through workers inflating compressed grains in
// parallel to the writer, in stream order. A fixed pool of jobs bounds the
// memory: about 16 MiB of grain buffers.
type ovaPipeline struct {
	ds      *ovaDisk
	workers int
	pool    chan *ovaJob // jobs free for reuse
	jobs    int          // jobs allocated so far, at most cap(pool)
	infl    vmdkInflater // the prelude's, in the caller's goroutine
}

// ovaGrainMemory is the memory the jobs' buffers may take.
const ovaGrainMemory = 16 << 20

func newOVAPipeline(ds *ovaDisk, workers int) *ovaPipeline {
	gb := ds.grainBytes
	per := gb + ds.maxCompressed()
	n := int(min(max(ovaGrainMemory/per, int64(2*workers+2)), 256))
	return &ovaPipeline{ds: ds, workers: workers, pool: make(chan *ovaJob, n)}
}

// get returns a free job, allocating one while fewer than cap(pool)
// exist (a small disk needs few), else waiting for one; nil when ctx is
// done first. Only the reader (one goroutine at a time) calls it.
func (p *ovaPipeline) get(ctx context.Context) *ovaJob {
	select {
	case j := <-p.pool:
		return j
	default:
	}
	if p.jobs < cap(p.pool) {
		p.jobs++
		j := &ovaJob{}
		j.g.data = make([]byte, 0, p.ds.grainBytes)
		if p.ds.info.Compressed {
			j.g.comp = make([]byte, 0, p.ds.maxCompressed())
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
func (p *ovaPipeline) decode(infl *vmdkInflater, j *ovaJob) error {
	g := &j.g
	want := min(p.ds.grainBytes, p.ds.info.Capacity-g.off)
	if !g.compressed {
		j.out = g.data
		return nil
	}
	buf := g.data[:p.ds.grainBytes]
	n, err := infl.inflate(buf, g.comp)
	if err != nil {
		return &VMDKError{Reason: fmt.Sprintf("grain at byte %d of the disk: corrupt compressed data", g.off), Err: err}
	}
	if int64(n) < want {
		return vmdkRefuse("grain at byte %d of the disk inflates to %d bytes, want %d", g.off, n, want)
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
func (p *ovaPipeline) prelude(xw *extentWriter) (pending []*ovaJob, headKnown bool, err error) {
	covered := func(off int64) bool { return off >= p.ds.info.Capacity || p.ds.hasGrain(off/p.ds.grainBytes) }
	// Writers stream grains in ascending order and leave out grains of
	// zeros: a stream ascending so far has brought every grain of the
	// head it has. Only another order leaves the head undecided.
	ascending, last := true, int64(-1)
	// hold puts a grain of the head into it; it reports false for one
	// past the head, left in its job.
	hold := func(j *ovaJob) (bool, error) {
		if j.g.off <= last {
			ascending = false
		}
		last = j.g.off
		n := min(p.ds.grainBytes, p.ds.info.Capacity-j.g.off)
		if !xw.held(j.g.off, n) {
			return false, nil
		}
		if err := p.decode(&p.infl, j); err != nil {
			return true, err
		}
		if err := xw.put(j.g.off, j.out); err != nil {
			return true, err
		}
		p.pool <- j
		return true, nil
	}
	for {
		j := p.get(context.Background()) // a job is free here: never blocks
		err := p.ds.next(&j.g)
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
func (p *ovaPipeline) run(ctx context.Context, w *ovaWalk, xw *extentWriter, pending []*ovaJob) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	n := cap(p.pool)
	work := make(chan *ovaJob, n)
	order := make(chan *ovaJob, n)
	var readErr error

	send := func(j *ovaJob) {
		j.done = make(chan struct{})
		j.err, j.out = nil, nil
		if j.g.compressed {
			work <- j // buffered for every job: never blocks
		} else {
			j.out = j.g.data
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
			err := p.ds.next(&j.g)
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
			var infl vmdkInflater
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
		if err := xw.put(j.g.off, j.out); err != nil {
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
