// Package logtail takes a bounded, redacted tail of the kernel log and of a
// log buffer, for the rescue agent to post to the control plane when a
// deployment fails.
//
// Bounded: whatever the source (a /dev/kmsg ring of many MiB, a reader
// that never ends), at most Options.MaxRead bytes are read, lines longer
// than MaxLine are left out whole, and the tail keeps at most MaxBytes and
// MaxLines. Redacted: before anything is cut, every line loses the secrets
// the caller names (the agent's token, the job's header values, the user
// data line by line), the values of parameters named like a token or a
// password ("byoi.token=..." stays in dmesg's "Kernel command line:" even
// with quiet), and the values of Authorization or Cookie headers. Lines are
// cut only after redaction, so a secret is never half-kept at a cut. The
// text is valid UTF-8 without control characters (tabs kept), safe to show
// in a web page as text and to put in JSON.
package logtail

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"unicode/utf8"

	"golang.org/x/sys/unix"
)

// Defaults of Options.
const (
	DefaultMaxBytes = 16 << 10
	DefaultMaxLines = 200
	DefaultMaxLine  = 8 << 10
	DefaultMaxRead  = 64 << 20
)

// Options bound and redact a tail. Zero values take the defaults.
type Options struct {
	MaxBytes int // size of the tail's text (default 16 KiB)
	MaxLines int // lines of the tail (default 200)
	MaxLine  int // a longer line is left out whole (default 8 KiB)
	MaxRead  int // bytes read from the source at most (default 64 MiB)
	// Secrets are removed wherever they appear: each whole value of at
	// least 4 bytes, each line of at least 8 bytes of a multi-line value
	// (user data), and each word of at least 10 bytes of any value (split
	// at spaces, quotes and punctuation: the password inside the user
	// data, the token of "Bearer ..."). Shorter pieces cannot be removed
	// without garbling the log and are left.
	Secrets []string
}

func (o Options) withDefaults() Options {
	if o.MaxBytes <= 0 {
		o.MaxBytes = DefaultMaxBytes
	}
	if o.MaxLines <= 0 {
		o.MaxLines = DefaultMaxLines
	}
	if o.MaxLine <= 0 {
		o.MaxLine = DefaultMaxLine
	}
	if o.MaxRead <= 0 {
		o.MaxRead = DefaultMaxRead
	}
	return o
}

// Tail is the end of a log.
type Tail struct {
	Text      string // the lines, each ending in "\n"
	Lines     int    // lines in Text
	Omitted   int    // earlier lines not in Text
	Redacted  int    // secrets replaced in Text
	Truncated bool   // the source was larger than MaxRead (its end was not read)
}

// Marker replaces every secret.
const Marker = "[redacted]"

// Kernel reads the kernel log: /dev/kmsg (read without blocking, from its
// oldest record to its newest), or syslog(2)'s buffer when /dev/kmsg cannot
// be opened. Lines look like dmesg's: "[    1.234567] text".
func Kernel(ctx context.Context, o Options) (Tail, error) {
	f, err := os.OpenFile("/dev/kmsg", os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return klog(ctx, o, err)
	}
	defer f.Close()
	return collect(ctx, o, func(emit func([]byte) bool) (bool, error) {
		buf := make([]byte, 8192) // a record is at most CONSOLE_EXT_LOG_MAX (8 KiB)
		read := 0
		for n := 0; ; n++ {
			if n%256 == 0 && ctx.Err() != nil {
				return false, ctx.Err()
			}
			k, err := syscall.Read(int(f.Fd()), buf)
			switch {
			case errors.Is(err, syscall.EAGAIN):
				return false, nil
			case errors.Is(err, syscall.EPIPE): // the record was overwritten while we read: go on
				continue
			case errors.Is(err, syscall.EINTR):
				continue
			case err != nil:
				return false, fmt.Errorf("read /dev/kmsg: %w", err)
			case k <= 0:
				return false, nil
			}
			read += k
			if read > o.withDefaults().MaxRead {
				return true, nil
			}
			if line, ok := kmsgRecord(buf[:k]); ok && !emit(line) {
				return false, nil
			}
		}
	})
}

// klog is the syslog(2) fallback (SYSLOG_ACTION_READ_ALL).
func klog(ctx context.Context, o Options, openErr error) (Tail, error) {
	size, err := unix.Klogctl(unix.SYSLOG_ACTION_SIZE_BUFFER, nil)
	if err != nil || size <= 0 {
		return Tail{}, fmt.Errorf("read the kernel log: %w (and syslog(2): %v)", openErr, err)
	}
	size = min(size, o.withDefaults().MaxRead, 32<<20)
	buf := make([]byte, size)
	n, err := unix.Klogctl(unix.SYSLOG_ACTION_READ_ALL, buf)
	if err != nil {
		return Tail{}, fmt.Errorf("read the kernel log: %w (and syslog(2): %v)", openErr, err)
	}
	return From(ctx, bytes.NewReader(buf[:n]), o)
}

var kmsgHead = regexp.MustCompile(`^(\d+),(\d+),(\d+),[^;]*;`)

// kmsgRecord turns one /dev/kmsg record ("6,339,5140900,-;text\n" and
// " KEY=value" continuation lines) into dmesg's line "[    5.140900] text".
func kmsgRecord(rec []byte) ([]byte, bool) {
	m := kmsgHead.FindSubmatchIndex(rec)
	if m == nil {
		return nil, false
	}
	us, err := strconv.ParseUint(string(rec[m[6]:m[7]]), 10, 64)
	if err != nil {
		return nil, false
	}
	text := rec[m[1]:]
	if i := bytes.IndexByte(text, '\n'); i >= 0 {
		text = text[:i] // the rest is the record's dictionary
	}
	return append([]byte(fmt.Sprintf("[%5d.%06d] ", us/1e6, us%1e6)), text...), true
}

// From reads a log from r — dmesg's text, /dev/kmsg records (turned into
// dmesg's lines), "<6>"-prefixed syslog(2) text, or any other log — and
// returns its redacted tail. Reading stops at EOF, at MaxRead, or when ctx
// ends (then the tail of what was read is returned with ctx's error).
func From(ctx context.Context, r io.Reader, o Options) (Tail, error) {
	od := o.withDefaults()
	return collect(ctx, o, func(emit func([]byte) bool) (bool, error) {
		br := bufio.NewReaderSize(io.LimitReader(r, int64(od.MaxRead)+1), 64<<10)
		read := 0
		prevKmsg := false
		var long []byte // a line being read in pieces
		tooLong := 0
		for n := 0; ; n++ {
			if n%1024 == 0 && ctx.Err() != nil {
				return false, ctx.Err()
			}
			chunk, err := br.ReadSlice('\n')
			read += len(chunk)
			if read > od.MaxRead {
				return true, nil
			}
			if errors.Is(err, bufio.ErrBufferFull) {
				if tooLong == 0 && len(long)+len(chunk) <= od.MaxLine {
					long = append(long, chunk...)
				} else {
					tooLong += len(long) + len(chunk)
					long = long[:0]
				}
				continue
			}
			if err != nil && !errors.Is(err, io.EOF) {
				return false, err
			}
			line := chunk
			if len(long) > 0 || tooLong > 0 {
				if tooLong == 0 && len(long)+len(chunk) <= od.MaxLine {
					line = append(long, chunk...)
				} else {
					tooLong += len(long) + len(chunk)
				}
				long = nil
			}
			if tooLong > 0 {
				if !emit([]byte(fmt.Sprintf("[a line of %d bytes was left out]", tooLong))) {
					return false, nil
				}
				tooLong = 0
			} else if len(line) > 0 {
				line = bytes.TrimSuffix(bytes.TrimSuffix(line, []byte("\n")), []byte("\r"))
				switch {
				case prevKmsg && len(line) > 0 && line[0] == ' ':
					// a /dev/kmsg dictionary line ("  SUBSYSTEM=pci")
				default:
					if rec, ok := kmsgRecord(line); ok {
						line, prevKmsg = rec, true
					} else {
						prevKmsg = false
						line = stripSyslogPrio(line)
					}
					if !emit(append([]byte(nil), line...)) {
						return false, nil
					}
				}
			}
			if errors.Is(err, io.EOF) {
				return false, nil
			}
		}
	})
}

var syslogPrio = regexp.MustCompile(`^<\d{1,3}>`)

func stripSyslogPrio(line []byte) []byte {
	if loc := syslogPrio.FindIndex(line); loc != nil {
		return line[loc[1]:]
	}
	return line
}

// collect keeps the last lines read by produce within a budget, then
// redacts, cleans and cuts them.
func collect(ctx context.Context, o Options, produce func(emit func([]byte) bool) (bool, error)) (Tail, error) {
	o = o.withDefaults()
	red := NewRedactor(o.Secrets...)
	// Raw lines are kept up to four times the tail's size: redaction may
	// shorten them.
	budget := 4*o.MaxBytes + o.MaxLine
	var ring [][]byte
	size, dropped := 0, 0
	emit := func(line []byte) bool {
		if len(line) > o.MaxLine {
			line = []byte(fmt.Sprintf("[a line of %d bytes was left out]", len(line)))
		}
		ring = append(ring, line)
		size += len(line) + 1
		for len(ring) > 1 && (size > budget || len(ring) > 2*o.MaxLines) {
			size -= len(ring[0]) + 1
			ring[0] = nil
			ring = ring[1:]
			dropped++
		}
		return true
	}
	truncated, err := produce(emit)
	t := finish(ring, dropped, o, red)
	t.Truncated = truncated
	if err != nil && ctx.Err() == nil {
		return t, err
	}
	return t, ctx.Err()
}

// finish redacts and cleans every kept line, then keeps the last ones
// within MaxBytes and MaxLines.
func finish(lines [][]byte, dropped int, o Options, red *Redactor) Tail {
	out := make([]string, len(lines))
	counts := make([]int, len(lines))
	for i, l := range lines {
		s, n := red.Redact(string(l))
		out[i], counts[i] = clean(s), n
	}
	var t Tail
	size, start := 0, len(out)
	for start > 0 && len(out)-start < o.MaxLines {
		l := len(out[start-1]) + 1
		if size+l > o.MaxBytes {
			if start == len(out) {
				// The last line alone is too long: keep its end (it is
				// redacted already, so the cut exposes nothing).
				out[start-1] = cutHead(out[start-1], o.MaxBytes-1)
				start--
				size = len(out[start]) + 1
			}
			break
		}
		size += l
		start--
	}
	kept := out[start:]
	var b strings.Builder
	b.Grow(size)
	for _, l := range kept {
		b.WriteString(l)
		b.WriteByte('\n')
	}
	t.Text = b.String()
	t.Lines = len(kept)
	t.Omitted = dropped + start
	for _, n := range counts[start:] {
		t.Redacted += n
	}
	return t
}

// cutHead keeps the last n bytes of s, starting on a rune boundary.
func cutHead(s string, n int) string {
	if len(s) <= n {
		return s
	}
	s = s[len(s)-n:]
	for len(s) > 0 && !utf8.RuneStart(s[0]) {
		s = s[1:]
	}
	return s
}

// clean makes s valid UTF-8 without control characters: invalid bytes
// become U+FFFD, control characters (but tabs) "\xNN", as the kernel
// writes them.
func clean(s string) string {
	ok := utf8.ValidString(s)
	if ok {
		for i := 0; i < len(s); i++ {
			if c := s[i]; (c < 0x20 && c != '\t') || c == 0x7f {
				ok = false
				break
			}
		}
	}
	if ok {
		for _, r := range s {
			if r >= 0x80 && r < 0xa0 || r == 0x2028 || r == 0x2029 {
				ok = false
				break
			}
		}
	}
	if ok {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); {
		r, n := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && n == 1:
			b.WriteRune(utf8.RuneError)
		case r < 0x20 && r != '\t' || r == 0x7f || r >= 0x80 && r < 0xa0 || r == 0x2028 || r == 0x2029:
			fmt.Fprintf(&b, `\x%02x`, r)
		default:
			b.WriteString(s[i : i+n])
		}
		i += n
	}
	return b.String()
}

// Buffer keeps the last bytes written to it: the agent's own log, as an
// io.Writer under a slog handler. Safe for concurrent use.
type Buffer struct {
	mu   sync.Mutex
	buf  []byte
	size int
	cut  bool // bytes were dropped at the front
}

// NewBuffer keeps the last size bytes (default 256 KiB when size <= 0).
func NewBuffer(size int) *Buffer {
	if size <= 0 {
		size = 256 << 10
	}
	return &Buffer{size: size}
}

// Write appends p, dropping the oldest bytes beyond the size.
func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	n := len(p)
	if len(p) >= b.size {
		p = p[len(p)-b.size:]
		b.buf = append(b.buf[:0], p...)
		b.cut = true
		return n, nil
	}
	if over := len(b.buf) + len(p) - b.size; over > 0 {
		b.buf = append(b.buf[:0], b.buf[over:]...)
		b.cut = true
	}
	b.buf = append(b.buf, p...)
	return n, nil
}

// Tail returns the buffer's redacted tail. A first line cut by the
// buffer's own limit is dropped: it may begin in the middle of a secret.
func (b *Buffer) Tail(o Options) Tail {
	b.mu.Lock()
	data := append([]byte(nil), b.buf...)
	cut := b.cut
	b.mu.Unlock()
	omitted := 0
	if cut {
		if i := bytes.IndexByte(data, '\n'); i >= 0 {
			data = data[i+1:]
		} else {
			data = nil
		}
		omitted = 1
	}
	t, _ := From(context.Background(), bytes.NewReader(data), o)
	t.Omitted += omitted
	return t
}
