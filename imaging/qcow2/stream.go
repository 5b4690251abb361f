package qcow2

import (
	"container/heap"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"io"
	"log/slog"
	"os"
	"runtime"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/byoi/byoi/imaging"
)

// Streaming conversion (issue 27). qcow2 files written by qemu-img convert
// and most image builders have their header, L1 table and each L2 table
// ahead of the data clusters those tables map. Stream converts such a file
// as it arrives: it reads the file once, in order, parses each table when
// the stream reaches it, and hands each data cluster to the decompressing
// writers when it arrives. Bytes that no table known so far maps (refcount
// blocks, unused space, data whose L2 table comes later) are kept in a
// bounded look-behind while tables are still to come, so a data cluster
// shortly ahead of its table still converts.
//
// Before the first write, every byte read is kept (the replay, bounded by
// StreamOptions.HoldLimit) and nothing reaches the target: the header is
// checked (CheckHeader, the extensions, the table bounds against the
// declared size), then the virtual disk's first MiB is assembled from the
// clusters converted in memory, and StreamOptions.Head decides on it (the
// partition table, the boot mode). Only then does StreamOptions.Start let
// the writing begin. When the layout does not allow that within the bound
// (the L1 table or the head's clusters far into the file, tables after
// their data, extended L2 entries, an unknown size), Stream returns a
// *NotStreamableError holding the replay: nothing was written, and the
// caller stages the image (Stage, Check, Convert) from the replay and the
// rest of the stream.
//
// After the first write, bytes no table maps yet go to a spill file (a
// memfd, bounded by the memory available minus DefaultMemoryReserve: page
// cache, not the heap), and the stream's last 4 MiB are kept whatever maps
// them (qemu packs compressed clusters across sector boundaries): a
// cluster written before its table (qemu reuses freed clusters, qemu-img
// convert writes an L2 table just after the first clusters it maps) still
// converts. Only an image beyond those bounds (a spill over the memory, a
// data cluster inside another item that passed before its table came) is
// refused then: a deployment through an imaging.Guard leaves no partition
// table. Every table's entries are
// checked as in Check: aligned, inside the declared file size, each L2
// table used once, compressed clusters inside the file.

// Streaming bounds.
const (
	// DefaultHoldLimit bounds what Stream reads before its first write.
	DefaultHoldLimit = 32 << 20
	// DefaultLookBehindLimit bounds the bytes kept for tables to come
	// once writing started (before, HoldLimit does).
	DefaultLookBehindLimit = 4 << 20
	// maxPendingItems bounds the clusters mapped by tables read but not
	// arrived yet (24 bytes each).
	maxPendingItems = 1 << 19
	// maxStreamL1 bounds the L1 entries Stream keeps (2 MiB of entries).
	maxStreamL1 = 1 << 18
	streamBlock = 1 << 20
	// ringSize is how much of the stream's latest bytes are kept while
	// tables are still to come (see streamer.ring).
	ringSize = 4 << 20
)

// StreamOptions tune Stream.
type StreamOptions struct {
	// DeclaredSize is the file's size (Content-Length). Required: the
	// table bounds are checked against it; unknown (<= 0) is not
	// streamable.
	DeclaredSize int64
	// TargetName names the target in a SizeError.
	TargetName string
	// Hash, when set, receives every byte read, in order.
	Hash hash.Hash
	// Head, when set, is called with the virtual disk's first MiB (less
	// for a smaller disk) and the header's Info before anything is
	// written; an error aborts with nothing written and comes back
	// unchanged.
	Head func(head []byte, info *Info) error
	// Start, when set, is called once Head passed, before the first
	// write (a Guard clears the old tables then). An error aborts.
	Start func() error
	// Ended, when set, is called once the stream ended (Hash complete)
	// with its size, before the target is flushed: the caller verifies
	// the checksum. An error aborts and comes back unchanged.
	Ended func(size int64) error
	// Workers decompress and write in parallel (default: GOMAXPROCS,
	// 2..4).
	Workers int
	// HoldLimit bounds the bytes read, and the converted bytes kept,
	// before the first write (default DefaultHoldLimit).
	HoldLimit int64
	// LookBehindLimit bounds the bytes kept for tables still to come
	// (default DefaultLookBehindLimit).
	LookBehindLimit int64
	// Progress gets the bytes read and DeclaredSize.
	Progress imaging.Progress
	Logger   *slog.Logger
}

// StreamResult describes a streamed conversion.
type StreamResult struct {
	Info *Info
	// Read is the bytes read from the stream.
	Read int64
	// Written and Zeroed are bytes of the virtual disk.
	Written, Zeroed int64
	// LookBehindPeak is the most bytes kept for tables to come.
	LookBehindPeak int64
	// After the stream ended: the writers finishing their clusters, the
	// clusters no write covered zeroed, the target flushed.
	Drain, Zero, Sync time.Duration
}

// NotStreamableError is an image Stream cannot convert as it streams. It is
// returned before anything was written: Replay holds every byte read from
// the stream (already given to StreamOptions.Hash), so the caller stages
// io.MultiReader(bytes.NewReader(Replay), rest of the stream).
type NotStreamableError struct {
	// Offset is where in the file it was decided.
	Offset int64
	Reason string
	Replay []byte
}

func (e *NotStreamableError) Error() string {
	return fmt.Sprintf("qcow2: %s at offset %d: staging", e.Reason, e.Offset)
}

// Item kinds.
const (
	itemL1 = iota
	itemL2
	itemData
	itemComp
)

// item is a range of the file a table maps: a table or a data cluster.
type item struct {
	start int64
	guest int64 // data: guest offset; L2: L1 index
	n     uint32
	kind  uint8
}

func (it item) end() int64 { return it.start + int64(it.n) }

type itemHeap []item

func (h itemHeap) Len() int           { return len(h) }
func (h itemHeap) Less(i, j int) bool { return h[i].start < h[j].start }
func (h itemHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *itemHeap) Push(x any)        { *h = append(*h, x.(item)) }
func (h *itemHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

// openItem is an item whose bytes are arriving.
type openItem struct {
	item
	buf    []byte
	filled int64
}

// spillPiece is a range of the file kept in the spill file at at.
type spillPiece struct{ off, at, n int64 }

// piece is a range of the file kept in the look-behind.
type lbPiece struct {
	off int64
	b   []byte
}

// streamer is the state of one Stream.
type streamer struct {
	ctx  context.Context
	opts StreamOptions
	log  *slog.Logger
	dst  imaging.Target
	info *Info
	size int64 // declared file size

	pos     int64 // bytes of the file processed
	hold    bool  // before the first write
	replay  []byte
	pending itemHeap
	open    []*openItem
	done    []*openItem // completed, to finish after the block

	l1Done    bool
	l2Pending int
	l1n       int64
	l2Seen    map[int64]bool

	lb     []lbPiece // sorted by off, disjoint
	lbSize int64
	lbPeak int64
	// ring holds the last bytes of the stream, whatever maps them, while
	// tables are still to come: a compressed cluster may begin inside the
	// last sector of the one before it (qemu packs them), so bytes an
	// earlier item covered may be a later table's data too; qemu-img
	// convert writes an L2 table shortly after the first clusters it maps.
	ring    []byte
	ringLen int64 // valid bytes, ending at pos
	// holdRanges are the look-behind's ranges before the first write
	// (their bytes are the replay's).
	holdRanges [][2]int64
	holdLB     int64
	// Once writing started, the look-behind's bytes go to a spill file
	// (a memfd: page cache, not the process's heap), up to the memory
	// available minus DefaultMemoryReserve: a cluster written far before
	// its table (qemu reuses freed clusters) still converts.
	spill       *os.File
	spillN      int64
	spillBudget int64 // -1: no spill (memfd refused, or full)
	spilled     []spillPiece

	// The head: guest [0, headLen).
	headLen     int64
	headWait    int  // head clusters whose data is still to come
	headL2      bool // the head's L2 table was read (or L1[0] is 0)
	holdWrites  map[int64][]byte
	holdBytes   int64
	nonZeroHead bool

	// bufs recycles the data items' buffers (2 clusters + a sector:
	// the largest compressed cluster).
	bufs sync.Pool

	// Writers.
	jobs    chan wjob
	wg      sync.WaitGroup
	bits    []atomic.Uint64 // guest clusters written
	written atomic.Int64
	werrMu  sync.Mutex
	werr    error
	wstop   atomic.Bool
}

// wjob is one cluster for a writer.
type wjob struct {
	guest      int64
	host       int64
	data       []byte
	compressed bool
}

// Stream converts the qcow2 image read from src (DeclaredSize bytes) onto
// dst as it arrives, when its layout allows (see above), and flushes dst:
// every byte of [0, virtual size) of dst ends equal to the image, what
// reads as zeros zeroed (never left with old data), nothing outside
// written. Its errors: *NotStreamableError (nothing written, stage
// instead), *Error refusals before the first write (nothing written),
// *imaging.SizeError, src's and the callbacks' errors unchanged, and after
// the first write *imaging.WriteError (a corrupt image found then also
// matches ErrRefused). Like Convert it only writes: a deployment writes
// through an imaging.Guard.
func Stream(ctx context.Context, src io.Reader, dst imaging.Target, opts StreamOptions) (*StreamResult, error) {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if opts.DeclaredSize <= 0 {
		return nil, &NotStreamableError{Reason: "size unknown"}
	}
	if opts.HoldLimit <= 0 {
		opts.HoldLimit = DefaultHoldLimit
	}
	if opts.LookBehindLimit <= 0 {
		opts.LookBehindLimit = DefaultLookBehindLimit
	}
	if opts.Workers <= 0 {
		opts.Workers = min(max(runtime.GOMAXPROCS(0), 2), 4)
	}
	RegisterDecompressors()
	s := &streamer{ctx: ctx, opts: opts, log: log, dst: dst, size: opts.DeclaredSize, hold: true,
		holdWrites: map[int64][]byte{}, l2Seen: map[int64]bool{}}
	start := time.Now()
	res, err := s.run(src)
	if err != nil {
		return res, err
	}
	el := time.Since(start)
	log.Info("qcow2 streamed", "bytes", res.Read, "virtual_size", s.info.VirtualSize, "written", res.Written,
		"zeroed", res.Zeroed, "look_behind_peak", res.LookBehindPeak, "elapsed", el.Round(time.Millisecond),
		"drain", res.Drain.Round(time.Millisecond), "zero", res.Zero.Round(time.Millisecond), "sync", res.Sync.Round(time.Millisecond),
		"mb_per_s", float64(res.Read)/1e6/max(el.Seconds(), 1e-9))
	return res, nil
}

// block is one read of the stream; refs: the hasher and the parser.
type block struct {
	buf  []byte
	n    int
	refs atomic.Int32
}

func (s *streamer) run(src io.Reader) (res *StreamResult, err error) {
	res = &StreamResult{}
	pool := make(chan *block, 4)
	for range cap(pool) {
		pool <- &block{buf: make([]byte, streamBlock)}
	}
	release := func(b *block) {
		if b.refs.Add(-1) == 0 {
			pool <- b
		}
	}
	var hashWG sync.WaitGroup
	var hashCh chan *block
	if s.opts.Hash != nil {
		hashCh = make(chan *block, cap(pool))
		hashWG.Go(func() {
			for b := range hashCh {
				s.opts.Hash.Write(b.buf[:b.n])
				release(b)
			}
		})
	}
	hashDone := false
	endHash := func() {
		if !hashDone {
			hashDone = true
			if hashCh != nil {
				close(hashCh)
			}
			hashWG.Wait()
		}
	}
	defer func() {
		endHash()
		s.stopWriters()
		s.closeSpill()
		res.Info = s.info
		res.LookBehindPeak = s.lbPeak
		if err != nil {
			var ns *NotStreamableError
			if errors.As(err, &ns) {
				ns.Replay = s.replay
			} else if !s.hold {
				var we *imaging.WriteError
				var qe *Error
				if errors.As(err, &qe) && !errors.As(err, &we) {
					err = &imaging.WriteError{Format: "qcow2", Err: err}
				}
			}
		}
	}()

	var total int64
	var lastProgress time.Time
	for {
		if err := s.ctx.Err(); err != nil {
			return res, err
		}
		if err := s.writerErr(); err != nil {
			return res, err
		}
		b := <-pool
		n, eof, rerr := imaging.ReadFull(src, b.buf)
		if rerr != nil {
			pool <- b
			return res, rerr
		}
		b.n = n
		if total+int64(n) > s.size {
			pool <- b
			return res, fmt.Errorf("qcow2 image is longer than the %d bytes announced", s.size)
		}
		total += int64(n)
		res.Read = total
		if n > 0 {
			if hashCh != nil {
				b.refs.Store(2)
				hashCh <- b
			} else {
				b.refs.Store(1)
			}
			err := s.feed(b.buf[:n], eof || total == s.size)
			release(b)
			if err != nil {
				return res, err
			}
		} else {
			pool <- b
		}
		if s.opts.Progress != nil && (time.Since(lastProgress) >= 100*time.Millisecond || eof) {
			lastProgress = time.Now()
			s.opts.Progress(total, s.size)
		}
		if eof {
			break
		}
	}
	if total < s.size {
		return res, fmt.Errorf("qcow2 image ended after %d of %d bytes: %w", total, s.size, io.ErrUnexpectedEOF)
	}
	if s.info == nil {
		return res, refuse("file of %d bytes is too short for a qcow2 header", total)
	}
	if len(s.pending) > 0 || len(s.open) > 0 || !s.l1Done || s.l2Pending > 0 {
		return res, refuse("tables or clusters past the end of the file")
	}
	if s.hold {
		if err := s.endHold(); err != nil {
			return res, err
		}
	}
	endHash()
	if s.opts.Ended != nil {
		if err := s.opts.Ended(total); err != nil {
			return res, err
		}
	}
	t := time.Now()
	s.stopWriters()
	if err := s.writerErr(); err != nil {
		return res, err
	}
	res.Drain = time.Since(t)
	t = time.Now()
	zeroed, err := s.zeroRest()
	res.Zeroed = zeroed
	res.Written = s.written.Load()
	if err != nil {
		return res, &imaging.WriteError{Format: "qcow2", Err: err}
	}
	res.Zero = time.Since(t)
	if err := s.ctx.Err(); err != nil {
		return res, err
	}
	t = time.Now()
	if err := s.dst.Sync(); err != nil {
		return res, &imaging.WriteError{Format: "qcow2", Err: fmt.Errorf("sync: %w", err)}
	}
	res.Sync = time.Since(t)
	return res, nil
}

// feed processes the next bytes of the file; last: the file ends with them.
func (s *streamer) feed(b []byte, last bool) error {
	if s.hold {
		// Every byte read is in the replay, the one over the limit too.
		s.replay = append(s.replay, b...)
		if int64(len(s.replay)) > s.opts.HoldLimit {
			return &NotStreamableError{Offset: s.pos, Reason: s.holdReason()}
		}
	}
	if s.info == nil {
		// The header: the first cluster, read before anything else.
		if len(s.replay) < 4096 && !last {
			return nil
		}
		info, err := CheckHeader(s.replay[:min(len(s.replay), 4096)], s.opts.TargetName, s.dst.Size())
		if err != nil {
			return err
		}
		if need := min(info.ClusterSize, s.size); int64(len(s.replay)) < need && !last {
			return nil
		}
		if err := s.setup(info); err != nil {
			return err
		}
		// Process everything read so far.
		all := s.replay
		for len(all) > 0 {
			k := min(len(all), streamBlock)
			if err := s.block(all[:k]); err != nil {
				return err
			}
			all = all[k:]
		}
	} else if err := s.block(b); err != nil {
		return err
	}
	if s.hold && s.headKnown() {
		return s.endHold()
	}
	return nil
}

// setup applies Check's file-level checks to the header and queues the L1
// table.
func (s *streamer) setup(info *Info) error {
	size := s.size
	cs := info.ClusterSize
	if size < cs && size < int64(info.HeaderLength) {
		return refuse("file of %d bytes is truncated", size)
	}
	if err := checkExtensions(info, s.replay[:min(cs, size, int64(len(s.replay)))]); err != nil {
		return err
	}
	within := func(what string, off, n int64) error {
		if off < 0 || n < 0 || off > size || n > size-off {
			return refuse("%s at %#x (%d bytes) lies past the end of the file (%d bytes): the image is truncated or corrupt", what, off, n, size)
		}
		return nil
	}
	if err := within("L1 table", info.L1Offset, int64(info.L1Size)*8); err != nil {
		return err
	}
	if err := within("refcount table", info.RefcountTableOffset, min(int64(info.RefcountTableClusters)*cs, size-info.RefcountTableOffset+1)); err != nil {
		return err
	}
	if info.NbSnapshots > 0 {
		if err := within("snapshot table", info.SnapshotsOffset, 1); err != nil {
			return err
		}
	}
	if info.VirtualSize > s.dst.Size() {
		return &imaging.SizeError{ImageSize: info.VirtualSize, TargetName: s.opts.TargetName, TargetSize: s.dst.Size()}
	}
	s.info = info
	if info.ExtendedL2 {
		return &NotStreamableError{Offset: 0, Reason: "extended L2 entries"}
	}
	s.l1n = min(int64(info.L1Size), info.l1Needed())
	if s.l1n > maxStreamL1 {
		return &NotStreamableError{Offset: 0, Reason: fmt.Sprintf("an L1 table of %d entries", s.l1n)}
	}
	nclusters := (info.VirtualSize + cs - 1) / cs
	s.bits = make([]atomic.Uint64, (nclusters+63)/64)
	s.headLen = min(int64(imaging.HeadSize), info.VirtualSize)
	if s.l1n == 0 {
		s.l1Done, s.headL2 = true, true
		return nil
	}
	return s.add(item{start: info.L1Offset, n: uint32(s.l1n * 8), kind: itemL1})
}

// tablesPending: a table not read yet may map bytes passing now.
func (s *streamer) tablesPending() bool { return !s.l1Done || s.l2Pending > 0 }

// add queues an item: ahead of the stream, or from the look-behind.
func (s *streamer) add(it item) error {
	if it.start >= s.pos {
		if len(s.pending) >= maxPendingItems {
			return s.notStreamable(fmt.Sprintf("more than %d clusters mapped ahead of the stream", maxPendingItems))
		}
		heap.Push(&s.pending, it)
		return nil
	}
	// It started before the stream position: its bytes so far must be in
	// the look-behind.
	o := &openItem{item: it, buf: s.itemBuf(it)}
	have := min(it.end(), s.pos) - it.start
	if !s.lbRead(o.buf[:have], it.start) {
		return s.notStreamable("tables after data")
	}
	o.filled = have
	if o.filled == int64(it.n) {
		s.done = append(s.done, o)
	} else {
		s.open = append(s.open, o)
	}
	return nil
}

// itemBuf is a buffer for an item's bytes: pooled for data clusters.
func (s *streamer) itemBuf(it item) []byte {
	if it.kind != itemData && it.kind != itemComp {
		return make([]byte, it.n)
	}
	if b, ok := s.bufs.Get().(*[]byte); ok && cap(*b) >= int(it.n) {
		return (*b)[:it.n]
	}
	return make([]byte, it.n, max(int64(it.n), 2*s.info.ClusterSize+512))
}

// putBuf gives a data item's buffer back.
func (s *streamer) putBuf(b []byte) {
	if int64(cap(b)) >= 2*s.info.ClusterSize+512 {
		s.bufs.Put(&b)
	}
}

// notStreamable: before the first write the caller may stage; after it,
// the image is refused.
func (s *streamer) notStreamable(reason string) error {
	if s.hold {
		return &NotStreamableError{Offset: s.pos, Reason: reason}
	}
	return refuse("%s at offset %d, after the conversion started streaming (the image's tables lie after the data they map)", reason, s.pos)
}

// block processes b, the bytes at s.pos.
func (s *streamer) block(b []byte) error {
	off, end := s.pos, s.pos+int64(len(b))
	fill := func(o *openItem) {
		a := o.start + o.filled
		k := min(o.end(), end) - a
		if k > 0 {
			copy(o.buf[o.filled:], b[a-off:a-off+k])
			o.filled += k
		}
	}
	cov := off
	still := s.open[:0]
	for _, o := range s.open {
		fill(o)
		cov = max(cov, min(o.end(), end))
		if o.filled == int64(o.n) {
			s.done = append(s.done, o)
		} else {
			still = append(still, o)
		}
	}
	s.open = still
	for len(s.pending) > 0 && s.pending[0].start < end {
		it := heap.Pop(&s.pending).(item)
		if it.start > cov {
			if err := s.unknown(it.start-cov, b[cov-off:it.start-off], cov); err != nil {
				return err
			}
		}
		cov = max(cov, min(it.end(), end))
		o := &openItem{item: it, buf: s.itemBuf(it)}
		fill(o)
		if o.filled == int64(it.n) {
			s.done = append(s.done, o)
		} else {
			s.open = append(s.open, o)
		}
	}
	if cov < end {
		if err := s.unknown(end-cov, b[cov-off:], cov); err != nil {
			return err
		}
	}
	s.pos = end
	if s.tablesPending() {
		s.keepRecent(b)
	}
	// Finish what completed, tables first: they may map bytes of this
	// block (kept in the look-behind above).
	for len(s.done) > 0 {
		sort.SliceStable(s.done, func(i, j int) bool { return s.done[i].kind < s.done[j].kind })
		o := s.done[0]
		s.done = s.done[1:]
		if err := s.finish(o); err != nil {
			return err
		}
	}
	if !s.tablesPending() && (s.lbSize > 0 || s.ring != nil || s.spill != nil || s.holdRanges != nil) {
		s.lb, s.lbSize = nil, 0
		s.holdRanges, s.holdLB = nil, 0
		s.ring, s.ringLen = nil, 0
		s.closeSpill()
	}
	return nil
}

// keepRecent adds b, the bytes ending at s.pos, to the ring.
func (s *streamer) keepRecent(b []byte) {
	if s.ring == nil {
		s.ring = make([]byte, ringSize)
	}
	if len(b) > ringSize {
		b = b[len(b)-ringSize:]
	}
	at := (s.pos - int64(len(b))) % ringSize
	k := copy(s.ring[at:], b)
	copy(s.ring, b[k:])
	s.ringLen = min(s.ringLen+int64(len(b)), ringSize)
}

// unknown keeps bytes no known table maps while tables are still to come.
func (s *streamer) unknown(n int64, b []byte, off int64) error {
	if n <= 0 || !s.tablesPending() {
		return nil
	}
	if s.hold {
		// The replay holds every byte read: only the range is noted
		// (endHold keeps its bytes).
		if k := len(s.holdRanges); k > 0 && s.holdRanges[k-1][1] == off {
			s.holdRanges[k-1][1] += n
		} else {
			s.holdRanges = append(s.holdRanges, [2]int64{off, off + n})
		}
		s.holdLB += n
		s.lbPeak = max(s.lbPeak, s.holdLB)
		return nil
	}
	if s.spillBudget >= 0 {
		if s.spillAppend(b, off) {
			return nil
		}
	}
	limit := s.opts.LookBehindLimit
	if s.hold {
		// Before the first write the hold limit bounds it (tables after
		// their data fall back to staging).
		limit = max(limit, s.opts.HoldLimit)
	}
	if s.lbSize+max(n, 4<<10) > limit {
		if s.hold {
			return s.notStreamable(fmt.Sprintf("more than %d MiB ahead of the tables that map them", limit>>20))
		}
		// Writing has started: the oldest bytes go (most are not data:
		// the room qemu leaves before an uncompressed cluster, refcount
		// blocks). A table that maps them after all is refused (add).
		for len(s.lb) > 0 && s.lbSize+max(n, 4<<10) > limit {
			s.lbSize -= int64(cap(s.lb[0].b))
			s.lb[0] = lbPiece{} // its bytes go to the GC now
			s.lb = s.lb[1:]
		}
		if n > limit {
			b, off, n = b[n-limit:], off+n-limit, limit
		}
	}
	if k := len(s.lb); k > 0 && s.lb[k-1].off+int64(len(s.lb[k-1].b)) == off && len(s.lb[k-1].b)+len(b) <= cap(s.lb[k-1].b) {
		s.lb[k-1].b = append(s.lb[k-1].b, b...)
	} else {
		// Pieces of at least 4 KiB, filled in place (growing one by
		// append would leave its old copies to the GC); their
		// capacity is what counts.
		p := append(make([]byte, 0, max(len(b), 4<<10)), b...)
		s.lb = append(s.lb, lbPiece{off: off, b: p})
		s.lbSize += int64(cap(p))
	}
	s.lbPeak = max(s.lbPeak, s.lbSize)
	return nil
}

// spillAppend keeps b (the file's bytes at off) in the spill file; false
// when it cannot (no memfd, over the budget).
func (s *streamer) spillAppend(b []byte, off int64) bool {
	if s.spill == nil {
		avail, err := stageMemAvailable()
		f, ferr := newMemfd()
		if err != nil || ferr != nil {
			s.log.Warn("qcow2 stream: no spill file for the look-behind", "err", errors.Join(err, ferr))
			s.spillBudget = -1
			return false
		}
		s.spill, s.spillBudget = f, min(avail-DefaultMemoryReserve, s.size)
	}
	n := int64(len(b))
	if s.spillN+n > s.spillBudget {
		s.log.Warn("qcow2 stream: the look-behind's spill file is full", "bytes", s.spillN)
		s.spillBudget = -1
		return false
	}
	if _, err := s.spill.WriteAt(b, s.spillN); err != nil {
		s.log.Warn("qcow2 stream: the look-behind's spill file refused a write", "err", err)
		s.spillBudget = -1
		return false
	}
	if k := len(s.spilled); k > 0 && s.spilled[k-1].off+s.spilled[k-1].n == off && s.spilled[k-1].at+s.spilled[k-1].n == s.spillN {
		s.spilled[k-1].n += n
	} else {
		s.spilled = append(s.spilled, spillPiece{off: off, at: s.spillN, n: n})
	}
	s.spillN += n
	s.lbPeak = max(s.lbPeak, s.lbSize+s.spillN)
	return true
}

// closeSpill drops the spill file.
func (s *streamer) closeSpill() {
	if s.spill != nil {
		s.spill.Close()
		s.spill, s.spilled, s.spillN = nil, nil, 0
	}
}

// lbRead fills p with the file's bytes at off from the look-behind.
func (s *streamer) lbRead(p []byte, off int64) bool {
	if s.hold {
		// Every byte read so far is in the replay.
		if off < 0 || off+int64(len(p)) > int64(len(s.replay)) {
			return false
		}
		copy(p, s.replay[off:])
		return true
	}
	for len(p) > 0 {
		if off >= s.pos-s.ringLen && off < s.pos {
			// From the ring, up to its end or its wrap.
			at := off % ringSize
			n := min(int64(len(p)), s.pos-off, ringSize-at)
			copy(p, s.ring[at:at+n])
			p, off = p[n:], off+n
			continue
		}
		i := sort.Search(len(s.lb), func(i int) bool { return s.lb[i].off+int64(len(s.lb[i].b)) > off })
		if i < len(s.lb) && s.lb[i].off <= off {
			k := copy(p, s.lb[i].b[off-s.lb[i].off:])
			p, off = p[k:], off+int64(k)
			continue
		}
		j := sort.Search(len(s.spilled), func(j int) bool { return s.spilled[j].off+s.spilled[j].n > off })
		if j >= len(s.spilled) || s.spilled[j].off > off {
			return false
		}
		sp := s.spilled[j]
		k := min(int64(len(p)), sp.off+sp.n-off)
		if m, err := s.spill.ReadAt(p[:k], sp.at+off-sp.off); int64(m) != k {
			s.log.Warn("qcow2 stream: read the spill file", "err", err)
			return false
		}
		p, off = p[k:], off+k
	}
	return true
}

// finish handles a complete item.
func (s *streamer) finish(o *openItem) error {
	switch o.kind {
	case itemL1:
		return s.finishL1(o.buf)
	case itemL2:
		return s.finishL2(o.guest, o.buf)
	default:
		return s.convert(o)
	}
}

func (s *streamer) finishL1(l1 []byte) error {
	be := binary.BigEndian
	cs := s.info.ClusterSize
	s.l1Done = true
	for i := range s.l1n {
		l2Off := int64(be.Uint64(l1[i*8:]) & l1OffsetMask)
		if l2Off == 0 {
			if i == 0 {
				s.headL2 = true
			}
			continue
		}
		if l2Off%cs != 0 {
			return refuse("L2 table offset %#x (L1 entry %d) is not cluster aligned", l2Off, i)
		}
		if l2Off >= s.size || cs > s.size-l2Off {
			return refuse("L2 table at %#x (L1 entry %d) lies past the end of the file (%d bytes): the image is truncated or corrupt", l2Off, i, s.size)
		}
		if s.l2Seen[l2Off] {
			return refuse("L2 table at %#x is used twice by the L1 table", l2Off)
		}
		s.l2Seen[l2Off] = true
		s.l2Pending++
		if err := s.add(item{start: l2Off, guest: i, n: uint32(cs), kind: itemL2}); err != nil {
			return err
		}
	}
	return nil
}

func (s *streamer) finishL2(l1i int64, l2 []byte) error {
	be := binary.BigEndian
	info := s.info
	cs := info.ClusterSize
	size := s.size
	s.l2Pending--
	entries := cs / 8
	x := 62 - (int(info.ClusterBits) - 8)
	for j := range entries {
		guest := (l1i*entries + j) * cs
		if guest >= info.VirtualSize {
			break
		}
		used := min(cs, info.VirtualSize-guest)
		e := be.Uint64(l2[j*8:])
		if e&l2Compressed != 0 {
			desc := e & descMask
			host := int64(desc & (1<<x - 1))
			sectors := int64(desc>>x) + 1
			end := host&^511 + sectors*512
			if host == 0 || host >= size || end-size >= 512 {
				return refuse("compressed cluster at %#x (%d bytes, guest offset %d) lies past the end of the file (%d bytes): the image is truncated or corrupt", host, end-host, guest, size)
			}
			info.CompressedClusters++
			info.AllocatedClusters++
			if err := s.addData(item{start: host, guest: guest, n: uint32(min(end, size) - host), kind: itemComp}); err != nil {
				return err
			}
			continue
		}
		if e&l2Reserved != 0 {
			return refuse("L2 entry for guest offset %d has reserved bits set (%#x)", guest, e)
		}
		host := int64(e & l2OffsetMask)
		if host == 0 {
			continue
		}
		if host%cs != 0 {
			return refuse("data cluster offset %#x (guest offset %d) is not cluster aligned", host, guest)
		}
		if e&l2ZeroFlag != 0 {
			continue
		}
		if host >= size || used > size-host {
			return refuse("data cluster at %#x (guest offset %d) lies past the end of the file (%d bytes): the image is truncated or corrupt", host, guest, size)
		}
		info.AllocatedClusters++
		if err := s.addData(item{start: host, guest: guest, n: uint32(used), kind: itemData}); err != nil {
			return err
		}
	}
	if l1i == 0 {
		s.headL2 = true
	}
	return nil
}

// addData queues a data cluster, counting the head's.
func (s *streamer) addData(it item) error {
	if it.guest < s.headLen && s.hold {
		s.headWait++
	}
	return s.add(it)
}

// holdReason says why the head is not known within the hold limit.
func (s *streamer) holdReason() string {
	if s.info != nil && (!s.l1Done || !s.headL2) {
		return "tables after data"
	}
	return fmt.Sprintf("the virtual disk's head is not known in the first %d MiB", s.opts.HoldLimit>>20)
}

func (s *streamer) headKnown() bool { return s.l1Done && s.headL2 && s.headWait == 0 }

// convert hands a complete data cluster to the writers, or, before the
// first write, converts it into memory.
func (s *streamer) convert(o *openItem) error {
	if !s.hold {
		select {
		case s.jobs <- wjob{guest: o.guest, host: o.start, data: o.buf, compressed: o.kind == itemComp}:
			return nil
		case <-s.ctx.Done():
			return s.ctx.Err()
		}
	}
	out, err := s.decode(o.buf, o.kind == itemComp, make([]byte, s.info.ClusterSize), o.guest, o.start)
	if err != nil {
		return err
	}
	if o.guest < s.headLen {
		s.headWait--
	}
	if imaging.AllZero(out) {
		return nil
	}
	if _, dup := s.holdWrites[o.guest]; !dup {
		s.holdBytes += int64(len(out))
	}
	s.holdWrites[o.guest] = out
	if s.holdBytes > s.opts.HoldLimit {
		return s.notStreamable(s.holdReason())
	}
	return nil
}

// decode returns the used bytes of a data cluster at guest (host: its
// file offset): data itself, or compressed decompressed into buf.
func (s *streamer) decode(data []byte, compressed bool, buf []byte, guest, host int64) ([]byte, error) {
	used := min(s.info.ClusterSize, s.info.VirtualSize-guest)
	if !compressed {
		return data[:used], nil
	}
	buf = buf[:s.info.ClusterSize]
	dec := decodeDeflate
	if s.info.Compression == "zstd" {
		dec = decodeZstd
	}
	if err := dec(buf, data); err != nil {
		return nil, &Error{Reason: fmt.Sprintf("compressed cluster at %#x (guest offset %d) is corrupt", host, guest), Err: err}
	}
	return buf[:used], nil
}

// endHold: the head is known. Head decides, Start lets the writing begin,
// the clusters converted so far are written, the writers start.
func (s *streamer) endHold() error {
	head := make([]byte, s.headLen)
	for g, b := range s.holdWrites {
		if g < s.headLen {
			copy(head[g:], b)
		}
	}
	if s.opts.Head != nil {
		if err := s.opts.Head(head, s.info); err != nil {
			return err
		}
	}
	if err := s.ctx.Err(); err != nil {
		return err
	}
	if s.opts.Start != nil {
		if err := s.opts.Start(); err != nil {
			return err
		}
	}
	s.hold = false
	// The bytes no table mapped yet move from the replay to the
	// look-behind proper.
	for _, r := range s.holdRanges {
		if err := s.unknown(r[1]-r[0], s.replay[r[0]:r[1]], r[0]); err != nil {
			return err
		}
	}
	s.holdRanges = nil
	s.replay = nil
	s.log.Info("qcow2: streaming conversion", "virtual_size", s.info.VirtualSize, "cluster_size", s.info.ClusterSize,
		"compression", s.info.Compression, "workers", s.opts.Workers, "read_before_first_write", s.pos)
	guests := make([]int64, 0, len(s.holdWrites))
	for g := range s.holdWrites {
		guests = append(guests, g)
	}
	sort.Slice(guests, func(i, j int) bool { return guests[i] < guests[j] })
	for _, g := range guests {
		if err := s.write(s.holdWrites[g], g); err != nil {
			return &imaging.WriteError{Format: "qcow2", Err: err}
		}
	}
	s.holdWrites = nil
	s.jobs = make(chan wjob, s.opts.Workers)
	for range s.opts.Workers {
		jobs := s.jobs
		s.wg.Go(func() { s.worker(jobs) })
	}
	return nil
}

func (s *streamer) worker(jobs <-chan wjob) {
	buf := make([]byte, s.info.ClusterSize)
	for j := range jobs {
		if s.wstop.Load() {
			continue
		}
		out, err := s.decode(j.data, j.compressed, buf, j.guest, j.host)
		if err == nil && !imaging.AllZero(out) {
			err = s.write(out, j.guest)
		}
		s.putBuf(j.data)
		if err != nil {
			s.werrMu.Lock()
			if s.werr == nil {
				s.werr = err
			}
			s.werrMu.Unlock()
			s.wstop.Store(true)
		}
	}
}

func (s *streamer) writerErr() error {
	s.werrMu.Lock()
	defer s.werrMu.Unlock()
	if s.werr == nil {
		return nil
	}
	return &imaging.WriteError{Format: "qcow2", Err: s.werr}
}

// stopWriters ends the writers and waits for them (idempotent).
func (s *streamer) stopWriters() {
	if s.jobs != nil {
		close(s.jobs)
		s.jobs = nil
		s.wg.Wait()
	}
}

// write puts a guest cluster's bytes at guest and marks it written.
func (s *streamer) write(b []byte, guest int64) error {
	if _, err := s.dst.WriteAt(b, guest); err != nil {
		return fmt.Errorf("write %d bytes at %d: %w", len(b), guest, err)
	}
	c := guest / s.info.ClusterSize
	s.bits[c/64].Or(1 << (c % 64))
	s.written.Add(int64(len(b)))
	return nil
}

// zeroRest zeroes every guest cluster not written: unallocated, zero, or
// data that read as zeros.
func (s *streamer) zeroRest() (int64, error) {
	cs := s.info.ClusterSize
	vsize := s.info.VirtualSize
	n := (vsize + cs - 1) / cs
	var zeroed int64
	for c := int64(0); c < n; {
		if s.bits[c/64].Load()&(1<<(c%64)) != 0 {
			c++
			continue
		}
		e := c + 1
		for e < n && s.bits[e/64].Load()&(1<<(e%64)) == 0 {
			e++
		}
		off, end := c*cs, min(e*cs, vsize)
		if err := s.ctx.Err(); err != nil {
			return zeroed, err
		}
		if err := s.dst.ZeroRange(s.ctx, off, end-off); err != nil {
			return zeroed, fmt.Errorf("zero %d bytes at %d: %w", end-off, off, err)
		}
		zeroed += end - off
		c = e
	}
	return zeroed, nil
}
